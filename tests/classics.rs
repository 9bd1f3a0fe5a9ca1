//! The classic distributed-programming tasks (Rosetta Code's "Distributed programming"
//! and its neighbours), done with captp: one test per task, each over real mutual TLS on
//! 127.0.0.1 with a separate vat per party, asserting exact results.
//!
//! The pattern is always the same: the service is an object; the authority to use it is
//! a reference (a sturdy ref URI to start with, then references passed in arguments and
//! results); nothing ships code. examples/README.md maps each task to its test here and
//! to the example that runs it.
//!
//! Every test body is bounded by a timeout, and no test sleeps to synchronise: it waits
//! for the message it expects, or settles the network with `Vat::sync` (a round trip on
//! every session) before checking that nothing more arrived. Every loop is bounded.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside the test functions (BeatClient) unwrap where a failure is the test failing"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use captp::{Args, Broken, BrokenKind, Object, Ref, Reply, Vat, VatId};
use ciborium::Value;
use common::{Fixture, drained, lock, start_client, within};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot};

/// A local object whose one method, `method`, decodes its arguments as `T`, hands them
/// to the returned channel and answers `()`: a callback a test can watch.
fn inbox<T>(method: &'static str) -> (Ref, mpsc::UnboundedReceiver<T>)
where
    T: DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let object = move |called: &str, args: Args| {
        if called != method {
            return Reply::unknown_method(called);
        }
        match args.decode::<T>() {
            Ok(value) => {
                let _ = tx.send(value);
                Reply::ok(())
            }
            Err(e) => Reply::err(e),
        }
    };
    (Ref::from_object(object), rx)
}

/// Everything already in `rx`, without waiting.
fn take_all<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut all = Vec::new();
    while let Ok(item) = rx.try_recv() {
        all.push(item);
    }
    all
}

/// An application error code carried by a `failed` error: the stable code before the
/// first `": "` of the message. `None` for any other kind of failure.
fn error_code(broken: &Broken) -> Option<&str> {
    (broken.kind() == BrokenKind::Failed)
        .then(|| broken.message().split_once(": ").map(|(code, _)| code))
        .flatten()
}

// ---- 1. Remote procedure with state (Ada's Distributed Systems Annex) ----

/// Ada's remote counter: `foo()` counts, `bar()` answers the count.
#[derive(Default)]
struct AdaCounter(AtomicU64);

impl Object for AdaCounter {
    fn call(&self, method: &str, args: Args) -> Reply {
        if let Err(e) = args.decode::<()>() {
            return Reply::err(e);
        }
        match method {
            "foo" => {
                self.0.fetch_add(1, Ordering::SeqCst);
                Reply::ok(())
            }
            "bar" => Reply::ok(self.0.load(Ordering::SeqCst)),
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ada_counter_keeps_its_state_across_client_runs() {
    within(async {
        let server = Fixture::new().object(AdaCounter::default()).serve().await;
        let uri = &server.uri;
        // Two successive client runs, each its own vat, as two runs of a client program.
        for expected in 1..=2u64 {
            let run = start_client().await;
            let counter = run.enliven(uri);
            counter.send_only("foo", ()); // one-way; E-order delivers it before `bar`
            assert_eq!(counter.send::<u64>("bar", ()).await.unwrap(), expected);
            run.shutdown().await;
        }
        assert_eq!(server.vat.stats().await.sturdy_refs, 1);
        server.vat.shutdown().await;
    })
    .await;
}

// ---- 2. Remote errors (Go's net/rpc, gRPC and Thrift tax computers) ----

/// The tax service's application errors. On the wire each is a `failed` error whose
/// message starts with a stable code (`negative_amount: `, `amount_too_large: `); the
/// rest is for people. A client matches on the kind and the code, never on prose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaxError {
    NegativeAmount(i64),
    AmountTooLarge(i64),
}

impl TaxError {
    const MAX_CENTS: i64 = 1_000_000_000_000;

    fn to_broken(self) -> Broken {
        Broken::failed(match self {
            TaxError::NegativeAmount(c) => format!("negative_amount: {c} cents"),
            TaxError::AmountTooLarge(c) => format!("amount_too_large: {c} cents"),
        })
    }

    /// The error a `Broken` carries, if it is one of these.
    fn from_broken(broken: &Broken) -> Option<TaxError> {
        let code = error_code(broken)?;
        let detail = broken.message().strip_prefix(code)?.strip_prefix(": ")?;
        let cents: i64 = detail.strip_suffix(" cents")?.parse().ok()?;
        match code {
            "negative_amount" => Some(TaxError::NegativeAmount(cents)),
            "amount_too_large" => Some(TaxError::AmountTooLarge(cents)),
            _ => None,
        }
    }
}

fn tax_computer(method: &str, args: Args) -> Reply {
    match method {
        "tax" => match args.decode::<(i64,)>() {
            Ok((cents,)) if cents < 0 => Reply::err(TaxError::NegativeAmount(cents).to_broken()),
            Ok((cents,)) if cents > TaxError::MAX_CENTS => {
                Reply::err(TaxError::AmountTooLarge(cents).to_broken())
            }
            // 5%, rounded half up.
            Ok((cents,)) => Reply::ok(cents / 20 + i64::from(cents % 20 >= 10)),
            Err(e) => Reply::err(e),
        },
        _ => Reply::unknown_method(method),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tax_computer_rejects_negative_amounts_with_an_error_to_match_on() {
    within(async {
        let c = Fixture::new().object(tax_computer).connect().await;
        let taxman = &c.obj;

        assert_eq!(taxman.send::<i64>("tax", (300,)).await.unwrap(), 15);
        assert_eq!(taxman.send::<i64>("tax", (29,)).await.unwrap(), 1);

        let refused = taxman.send::<i64>("tax", (-5,)).await.unwrap_err();
        assert_eq!(refused.kind(), BrokenKind::Failed);
        assert_eq!(error_code(&refused), Some("negative_amount"));
        assert_eq!(
            TaxError::from_broken(&refused),
            Some(TaxError::NegativeAmount(-5))
        );
        assert_eq!(refused.to_string(), "failed: negative_amount: -5 cents");

        let huge = taxman.send::<i64>("tax", (i64::MAX,)).await.unwrap_err();
        assert_eq!(
            TaxError::from_broken(&huge),
            Some(TaxError::AmountTooLarge(i64::MAX))
        );

        // What the protocol says, the service never does: these are other kinds, and
        // carry no application code.
        let bad = taxman.send::<i64>("tax", ("ten",)).await.unwrap_err();
        assert_eq!(bad.kind(), BrokenKind::BadArguments);
        assert_eq!(TaxError::from_broken(&bad), None);
        let unknown = taxman.send::<i64>("vat", (300,)).await.unwrap_err();
        assert_eq!(unknown.kind(), BrokenKind::UnknownMethod);
        assert_eq!(error_code(&unknown), None);

        // A refusal is one answer, not a broken connection.
        assert_eq!(taxman.send::<i64>("tax", (10,)).await.unwrap(), 1);
        c.stop().await;
    })
    .await;
}

// ---- 3. Structs in, structs out, and an exception (D's rpc) ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct S1 {
    number: i32,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct S2 {
    name: String,
    number: i32,
}

fn d_rpc(method: &str, args: Args) -> Reply {
    match method {
        "say_hello" => args
            .decode::<(String,)>()
            .map(|(name,)| format!("Hello, {name}!"))
            .into(),
        "add" => args
            .decode::<(i32, i32)>()
            .and_then(|(a, b)| {
                a.checked_add(b)
                    .ok_or_else(|| Broken::failed(format!("overflow: {a} + {b}")))
            })
            .into(),
        "struct_test" => args
            .decode::<(S1,)>()
            .map(|(s1,)| S2 {
                name: s1.name.to_uppercase(),
                number: s1.number + 1,
            })
            .into(),
        "die" => Reply::err(Broken::failed("died: the server was asked to die")),
        _ => Reply::unknown_method(method),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_rpc_structs_in_structs_out_and_an_exception() {
    within(async {
        let c = Fixture::new().object(d_rpc).connect().await;
        let rpc = &c.obj;

        let hello: String = rpc.send("say_hello", ("ada",)).await.unwrap();
        assert_eq!(hello, "Hello, ada!");
        assert_eq!(rpc.send::<i32>("add", (40, 2)).await.unwrap(), 42);
        let s2: S2 = rpc
            .send(
                "struct_test",
                (S1 {
                    number: 41,
                    name: "bob".into(),
                },),
            )
            .await
            .unwrap();
        assert_eq!(
            s2,
            S2 {
                name: "BOB".into(),
                number: 42
            }
        );

        // The exception: the call breaks with the error the method raised.
        let died = rpc.send::<()>("die", ()).await.unwrap_err();
        assert_eq!(died.kind(), BrokenKind::Failed);
        assert_eq!(died.message(), "died: the server was asked to die");
        let overflow = rpc.send::<i32>("add", (i32::MAX, 1)).await.unwrap_err();
        assert_eq!(error_code(&overflow), Some("overflow"));
        // A struct of the wrong shape is the caller's mistake, not the server's.
        let wrong = rpc.send::<S2>("struct_test", ((1, 2),)).await.unwrap_err();
        assert_eq!(wrong.kind(), BrokenKind::BadArguments);

        // And the server lives on.
        assert_eq!(rpc.send::<i32>("add", (1, 1)).await.unwrap(), 2);
        c.stop().await;
    })
    .await;
}

// ---- 4. Arbitrary data structures (Factor, Erlang, LFE, Perl) ----

/// A logger that takes any CBOR value: `log(v)` keeps it and answers it back,
/// `entries()` answers everything logged, in order.
#[derive(Default)]
struct AnyLogger(Mutex<Vec<Value>>);

impl Object for AnyLogger {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "log" => match args.decode::<(Value,)>() {
                Ok((value,)) => {
                    lock(&self.0).push(value.clone());
                    Reply::ok(value)
                }
                Err(e) => Reply::err(e),
            },
            "entries" => Reply::ok(lock(&self.0).clone()),
            _ => Reply::unknown_method(method),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    lines: Vec<(String, u32)>,
    tags: BTreeMap<String, Vec<String>>,
    note: Option<String>,
    nested: Vec<Vec<BTreeMap<String, i64>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_data_structures_round_trip_through_a_logger() {
    within(async {
        let c = Fixture::new().object(AnyLogger::default()).connect().await;
        let logger = &c.obj;

        let text = "héllo, wörld ✓".to_owned();
        let integer = i64::MIN;
        let tuple = (7u8, "seven".to_owned(), true, -7.5f64);
        let order = Order {
            id: 42,
            lines: vec![("apple".into(), 3), ("pear".into(), 0)],
            tags: BTreeMap::from([
                ("colour".into(), vec!["red".into(), "green".into()]),
                ("empty".into(), vec![]),
            ]),
            note: None,
            nested: vec![
                vec![BTreeMap::from([("a".into(), 1), ("b".into(), -2)])],
                vec![],
                vec![BTreeMap::new(), BTreeMap::from([("z".into(), i64::MAX)])],
            ],
        };
        let bytes = ByteBuf::from((0..=255u8).collect::<Vec<u8>>());
        let float = std::f64::consts::PI;
        let big = u64::MAX;

        // Each comes back as itself, through a server that knows none of these types.
        macro_rules! round_trip {
            ($value:expr, $ty:ty) => {{
                let back: $ty = logger.send("log", ($value.clone(),)).await.unwrap();
                assert_eq!(back, $value);
            }};
        }
        round_trip!(text, String);
        round_trip!(integer, i64);
        round_trip!(tuple, (u8, String, bool, f64));
        round_trip!(order, Order);
        round_trip!(bytes, ByteBuf);
        round_trip!(float, f64);
        round_trip!(big, u64);

        // The heterogeneous log, read back whole: as a typed tuple ...
        type Everything = (
            String,
            i64,
            (u8, String, bool, f64),
            Order,
            ByteBuf,
            f64,
            u64,
        );
        let everything: Everything = logger.send("entries", ()).await.unwrap();
        assert_eq!(
            everything,
            (
                text.clone(),
                integer,
                tuple.clone(),
                order.clone(),
                bytes.clone(),
                float,
                big
            )
        );
        // ... and as generic values, which keep integers, bytes and floats apart.
        let values: Vec<Value> = logger.send("entries", ()).await.unwrap();
        let expected = vec![
            Value::serialized(&text).unwrap(),
            Value::serialized(&integer).unwrap(),
            Value::serialized(&tuple).unwrap(),
            Value::serialized(&order).unwrap(),
            Value::serialized(&bytes).unwrap(),
            Value::serialized(&float).unwrap(),
            Value::serialized(&big).unwrap(),
        ];
        assert_eq!(values, expected);
        assert!(matches!(values[4], Value::Bytes(ref b) if b.len() == 256));
        assert_eq!(values[5], Value::Float(std::f64::consts::PI));
        c.stop().await;
    })
    .await;
}

// ---- 5. A name service (Pyro, Objective-C distributed objects, JoCaml) ----

/// A registry of services by name. `register(name, service)` keeps a reference and
/// answers a registration, whose `cancel()` takes the name back (so only the service
/// that registered can unregister); `lookup(name)` hands the reference on; `names()`
/// lists them. A service whose reference breaks (its vat went away) is forgotten. Each
/// name that goes is reported once on `forgotten`.
#[derive(Clone)]
struct Registry(Arc<RegistryInner>);

struct RegistryInner {
    services: Mutex<Services>,
    forgotten: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct Services {
    next_id: u64,
    /// By name: the service, which registration it is, and (to drop, which stops the
    /// task watching the service) a sender.
    by_name: BTreeMap<String, (Ref, u64, oneshot::Sender<()>)>,
}

impl RegistryInner {
    /// Removes `name` if it is still registration `id`.
    fn forget(&self, name: &str, id: u64) {
        let mut services = lock(&self.services);
        if services.by_name.get(name).is_some_and(|(_, i, _)| *i == id) {
            services.by_name.remove(name);
            let _ = self.forgotten.send(name.to_owned());
        }
    }
}

impl Registry {
    fn new() -> (Registry, mpsc::UnboundedReceiver<String>) {
        let (forgotten, rx) = mpsc::unbounded_channel();
        let inner = RegistryInner {
            services: Mutex::default(),
            forgotten,
        };
        (Registry(Arc::new(inner)), rx)
    }

    fn register(&self, name: String, service: Ref) -> Reply {
        let mut services = lock(&self.0.services);
        if services.by_name.contains_key(&name) {
            return Reply::err(Broken::failed(format!("name_taken: {name}")));
        }
        let id = services.next_id;
        services.next_id += 1;
        let (watching, stop) = oneshot::channel();
        services
            .by_name
            .insert(name.clone(), (service.clone(), id, watching));
        drop(services);
        let registry = Arc::downgrade(&self.0);
        let watched = name.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = service.when_broken() => {
                    if let Some(registry) = registry.upgrade() {
                        registry.forget(&watched, id);
                    }
                }
                _ = stop => {}
            }
        });
        let registry = self.0.clone();
        Reply::object(move |method: &str, _: Args| match method {
            "cancel" => {
                registry.forget(&name, id);
                Reply::ok(())
            }
            _ => Reply::unknown_method(method),
        })
    }

    fn lookup(&self, name: &str) -> Result<Ref, Broken> {
        lock(&self.0.services)
            .by_name
            .get(name)
            .map(|(service, ..)| service.clone())
            .ok_or_else(|| Broken::failed(format!("not_found: {name}")))
    }
}

impl Object for Registry {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "register" => match args.decode::<(String, Ref)>() {
                Ok((name, service)) => self.register(name, service),
                Err(e) => Reply::err(e),
            },
            "lookup" => match args.decode::<(String,)>().and_then(|(n,)| self.lookup(&n)) {
                Ok(service) => Reply::reference(service),
                Err(e) => Reply::err(e),
            },
            "names" => Reply::ok(
                lock(&self.0.services)
                    .by_name
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            _ => Reply::unknown_method(method),
        }
    }
}

fn greeter(method: &str, args: Args) -> Reply {
    match method {
        "greet" => args
            .decode::<(String,)>()
            .map(|(who,)| format!("Hello, {who}!"))
            .into(),
        _ => Reply::unknown_method(method),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_service_registers_looks_up_and_forgets() {
    within(async {
        // The registry's vat exports it by sturdy ref: that URI is the name service.
        let (registry, mut forgotten) = Registry::new();
        let registry_vat = Fixture::new().object(registry).serve().await;
        let uri = &registry_vat.uri;

        // A third vat registers a greeter of its own, by reference: it needs no URI
        // (nor a listening socket) of its own.
        let greeter_vat = start_client().await;
        let at_greeter = greeter_vat.enliven(uri);
        let _greeting: Ref = at_greeter
            .send("register", ("greeter", Ref::from_object(greeter)))
            .await
            .unwrap();
        let taken = at_greeter
            .send::<Ref>("register", ("greeter", Ref::from_object(greeter)))
            .await
            .unwrap_err();
        assert_eq!(error_code(&taken), Some("name_taken"));

        // Another registers a counter.
        let counter_vat = start_client().await;
        let counter = Ref::from_object(AdaCounter::default());
        let counting: Ref = counter_vat
            .enliven(uri)
            .send("register", ("counter", counter))
            .await
            .unwrap();

        // A fourth vat looks them up and calls them. The lookup and the call are
        // pipelined: both leave at once.
        let user = start_client().await;
        let names = user.enliven(uri);
        let listed: Vec<String> = names.send("names", ()).await.unwrap();
        assert_eq!(listed, ["counter", "greeter"]);
        let hello: String = names
            .send_ref("lookup", ("greeter",))
            .send("greet", ("ada",))
            .await
            .unwrap();
        assert_eq!(hello, "Hello, ada!");
        let counter_ref: Ref = names.send("lookup", ("counter",)).await.unwrap();
        counter_ref.send_only("foo", ());
        counter_ref.send_only("foo", ());
        assert_eq!(counter_ref.send::<u64>("bar", ()).await.unwrap(), 2);
        // Two lookups of one name give the same reference.
        let again: Ref = names.send("lookup", ("counter",)).await.unwrap();
        assert_eq!(again, counter_ref);

        let missing = names.send::<Ref>("lookup", ("printer",)).await.unwrap_err();
        assert_eq!(missing.message(), "not_found: printer");

        // The greeter's vat goes away: the registry forgets the name, and a greeter
        // looked up before no longer answers.
        let greeter_ref: Ref = names.send("lookup", ("greeter",)).await.unwrap();
        greeter_vat.shutdown().await;
        assert_eq!(forgotten.recv().await.unwrap(), "greeter");
        let listed: Vec<String> = names.send("names", ()).await.unwrap();
        assert_eq!(listed, ["counter"]);
        let gone = greeter_ref
            .send::<String>("greet", ("bob",))
            .await
            .unwrap_err();
        assert_eq!(gone.kind(), BrokenKind::Disconnected, "{gone}");
        let missing = names.send::<Ref>("lookup", ("greeter",)).await.unwrap_err();
        assert_eq!(missing.message(), "not_found: greeter");
        assert_eq!(counter_ref.send::<u64>("bar", ()).await.unwrap(), 2);

        // The counter's registration takes its name back.
        counting.send::<()>("cancel", ()).await.unwrap();
        assert_eq!(forgotten.recv().await.unwrap(), "counter");
        let listed: Vec<String> = names.send("names", ()).await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        assert!(forgotten.try_recv().is_err(), "forgot something twice");

        for vat in [&user, &counter_vat, &registry_vat.vat] {
            vat.shutdown().await;
        }
    })
    .await;
}

// ---- 6. Group messaging (Spread) ----

/// A group: `join(name, listener)` answers a membership; `membership.multicast(text)`
/// stamps the text with the group's next sequence number and delivers
/// `deliver(seq, from, text)` to every *other* member's listener. Delivery happens under
/// the group's lock, one-way, and each listener's messages arrive in the order sent on
/// it (E-order), so every member sees one total order.
#[derive(Clone, Default)]
struct Group(Arc<Mutex<GroupState>>);

#[derive(Default)]
struct GroupState {
    next_id: u64,
    next_seq: u64,
    members: BTreeMap<u64, (String, Ref)>,
}

struct Membership {
    group: Group,
    id: u64,
}

impl Object for Group {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "join" => match args.decode::<(String, Ref)>() {
                Ok((name, listener)) => {
                    let mut state = lock(&self.0);
                    let id = state.next_id;
                    state.next_id += 1;
                    state.members.insert(id, (name, listener));
                    Reply::object(Membership {
                        group: self.clone(),
                        id,
                    })
                }
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

impl Object for Membership {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "multicast" => match args.decode::<(String,)>() {
                Ok((text,)) => {
                    let mut state = lock(&self.group.0);
                    let Some((from, _)) = state.members.get(&self.id) else {
                        return Reply::err(Broken::failed("not_a_member: you left the group"));
                    };
                    let from = from.clone();
                    state.next_seq += 1;
                    let seq = state.next_seq;
                    for (_, (_, listener)) in state.members.iter().filter(|(id, _)| **id != self.id)
                    {
                        listener.send_only("deliver", (seq, &from, &text));
                    }
                    Reply::ok(seq)
                }
                Err(e) => Reply::err(e),
            },
            "leave" => {
                lock(&self.group.0).members.remove(&self.id);
                Reply::ok(())
            }
            _ => Reply::unknown_method(method),
        }
    }

    fn lost_client(&self, _peer: VatId) {
        lock(&self.group.0).members.remove(&self.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_every_other_member_once_in_one_order() {
    const MEMBERS: usize = 4;
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 40;
    within(async {
        let group_vat = Fixture::new().object(Group::default()).serve().await;
        let uri = &group_vat.uri;

        // Every member in a vat of its own, joined before anyone speaks.
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let vat = start_client().await;
            let name = format!("m{i}");
            let (listener, inbox) = inbox::<(u64, String, String)>("deliver");
            let membership: Ref = vat
                .enliven(uri)
                .send("join", (&name, listener))
                .await
                .unwrap();
            members.push((vat, name, membership, inbox));
        }

        // Three members speak at once, each firing all its messages without waiting
        // (in turn, so that they interleave on their way to the group).
        let mut sends: Vec<Vec<_>> = (0..SENDERS).map(|_| Vec::new()).collect();
        for i in 0..PER_SENDER {
            for (sent, (_, name, membership, _)) in sends.iter_mut().zip(&members) {
                sent.push(membership.send::<u64>("multicast", (format!("{name}/{i}"),)));
            }
        }
        let mut speaking = Vec::new();
        for sent in sends {
            speaking.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for send in sent {
                    seqs.push(send.await.unwrap());
                }
                seqs
            }));
        }
        let mut stamped = Vec::new();
        for speaker in speaking {
            let seqs = speaker.await.unwrap();
            // A sender's own messages were stamped in the order it sent them.
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            stamped.extend(seqs);
        }
        stamped.sort_unstable();
        let total = (SENDERS * PER_SENDER) as u64;
        assert_eq!(stamped, (1..=total).collect::<Vec<_>>());

        // Every member hears every message but its own: wait for that many, then let
        // the network settle (the group vat's round trip on each member's session
        // follows every delivery) and check that nothing more came.
        let mut heard_by = Vec::new();
        for (i, (_, _, _, inbox)) in members.iter_mut().enumerate() {
            let own = if i < SENDERS { PER_SENDER } else { 0 };
            let mut heard = Vec::new();
            for _ in 0..(SENDERS * PER_SENDER - own) {
                heard.push(inbox.recv().await.unwrap());
            }
            heard_by.push(heard);
        }
        group_vat.vat.sync().await;
        for (_, name, _, inbox) in &mut members {
            assert_eq!(take_all(inbox), [], "{name} heard a message twice");
        }

        for ((_, name, _, _), heard) in members.iter().zip(&heard_by) {
            // Never its own, each other sender's messages once and in order ...
            for sender in (0..SENDERS).map(|s| format!("m{s}")) {
                let texts: Vec<&str> = heard
                    .iter()
                    .filter(|(_, from, _)| *from == sender)
                    .map(|(_, _, text)| text.as_str())
                    .collect();
                let expected: Vec<String> = if sender == *name {
                    vec![]
                } else {
                    (0..PER_SENDER).map(|i| format!("{sender}/{i}")).collect()
                };
                assert_eq!(texts, expected, "{name} hearing {sender}");
            }
            // ... and in the group's one total order.
            assert!(
                heard.windows(2).all(|w| w[0].0 < w[1].0),
                "{name} heard out of order"
            );
        }
        // Members agree on what each sequence number was.
        let mut by_seq = BTreeMap::new();
        for heard in &heard_by {
            for (seq, from, text) in heard {
                let first = by_seq.entry(*seq).or_insert((from, text));
                assert_eq!(*first, (from, text), "members disagree on #{seq}");
            }
        }
        assert_eq!(by_seq.len() as u64, total);

        for (vat, ..) in members {
            vat.shutdown().await;
        }
        group_vat.vat.shutdown().await;
    })
    .await;
}

// ---- 7. Heartbeat broadcast (the Tcl server exercises) ----

/// Calls `beat(n)` on every subscriber once per interval (`n` counts ticks). A
/// subscriber is forgotten when it cancels, when its listener breaks or a beat to it
/// fails (its vat went away), or when the session holding its subscription ends; each
/// forgetting is reported once on `forgotten`, with the subscriber's name and why.
#[derive(Clone)]
struct Heartbeat(Arc<Beats>);

struct Beats {
    subscribers: Mutex<BTreeMap<u64, Subscriber>>,
    next_id: AtomicU64,
    forgotten: mpsc::UnboundedSender<(String, &'static str)>,
}

struct Subscriber {
    name: String,
    listener: Ref,
    /// The last tick sent to this subscriber.
    last_sent: Option<u64>,
    /// Dropped on removal, which stops the task watching the listener.
    _watching: oneshot::Sender<()>,
}

impl Beats {
    /// Removes a subscriber, once; answers the last tick it was sent.
    fn forget(&self, id: u64, why: &'static str) -> Option<u64> {
        let removed = lock(&self.subscribers).remove(&id)?;
        let _ = self.forgotten.send((removed.name, why));
        removed.last_sent
    }
}

impl Heartbeat {
    fn start(interval: Duration) -> (Heartbeat, mpsc::UnboundedReceiver<(String, &'static str)>) {
        let (forgotten, rx) = mpsc::unbounded_channel();
        let beats = Arc::new(Beats {
            subscribers: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            forgotten,
        });
        // The ticker holds the state weakly: it stops when the heartbeat is dropped.
        let weak = Arc::downgrade(&beats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            // Late ticks are not made up for in a burst: the beat stays one per interval.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let start = tokio::time::Instant::now();
            for n in 1u64.. {
                // When the tick was due, in microseconds since the start.
                let due = tick.tick().await - start;
                let due = u64::try_from(due.as_micros()).unwrap_or(u64::MAX);
                let Some(beats) = weak.upgrade() else { return };
                // Sent under the lock, so a cancel (also under it) sees `last_sent` exact.
                let mut sent = Vec::new();
                for (id, s) in lock(&beats.subscribers).iter_mut() {
                    s.last_sent = Some(n);
                    sent.push((*id, s.listener.send::<()>("beat", (n, due))));
                }
                for (id, beat) in sent {
                    let weak = Arc::downgrade(&beats);
                    tokio::spawn(async move {
                        if beat.await.is_err() {
                            if let Some(beats) = weak.upgrade() {
                                beats.forget(id, "a beat failed");
                            }
                        }
                    });
                }
            }
        });
        (Heartbeat(beats), rx)
    }

    fn subscribe(&self, name: String, listener: Ref) -> Reply {
        let id = self.0.next_id.fetch_add(1, Ordering::SeqCst);
        let (watching, stop) = oneshot::channel();
        lock(&self.0.subscribers).insert(
            id,
            Subscriber {
                name,
                listener: listener.clone(),
                last_sent: None,
                _watching: watching,
            },
        );
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            tokio::select! {
                _ = listener.when_broken() => {
                    if let Some(beats) = weak.upgrade() {
                        beats.forget(id, "its listener broke");
                    }
                }
                _ = stop => {}
            }
        });
        Reply::object(Subscription {
            beats: self.0.clone(),
            id,
        })
    }
}

impl Object for Heartbeat {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "subscribe" => match args.decode::<(String, Ref)>() {
                Ok((name, listener)) => self.subscribe(name, listener),
                Err(e) => Reply::err(e),
            },
            "subscribers" => Reply::ok(lock(&self.0.subscribers).len()),
            _ => Reply::unknown_method(method),
        }
    }
}

/// One subscriber's authority to cancel its own subscription (and nobody else's).
struct Subscription {
    beats: Arc<Beats>,
    id: u64,
}

impl Object for Subscription {
    fn call(&self, method: &str, _args: Args) -> Reply {
        match method {
            // Answers the last tick sent, so the subscriber knows what may still be in
            // flight (beats and this answer travel by different paths).
            "cancel" => Reply::ok(self.beats.forget(self.id, "cancelled")),
            _ => Reply::unknown_method(method),
        }
    }

    fn lost_client(&self, _peer: VatId) {
        self.beats.forget(self.id, "lost client");
    }
}

/// A heartbeat subscriber in a vat of its own, and what it has heard.
struct BeatClient {
    vat: Vat,
    heartbeat: Ref,
    subscription: Ref,
    /// `beat(n, due)`: the tick's number, and when the server's clock had it due.
    inbox: mpsc::UnboundedReceiver<(u64, u64)>,
    heard: Vec<(u64, u64)>,
}

impl BeatClient {
    async fn subscribe(uri: &captp::SturdyRef, name: &str) -> BeatClient {
        let vat = start_client().await;
        let (listener, inbox) = inbox::<(u64, u64)>("beat");
        let heartbeat = vat.enliven(uri);
        let subscription = heartbeat.send_ref("subscribe", (name, listener));
        BeatClient {
            vat,
            heartbeat,
            subscription,
            inbox,
            heard: Vec::new(),
        }
    }

    /// Waits for the next `n` beats.
    async fn hear(&mut self, n: usize) {
        for _ in 0..n {
            self.heard.push(self.inbox.recv().await.unwrap());
        }
    }

    /// Whether the ticks heard are consecutive: no beat lost, none twice.
    fn consecutive(&self) -> bool {
        self.heard.windows(2).all(|w| w[1].0 == w[0].0 + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reaches_subscribers_and_forgets_the_gone() {
    const INTERVAL: Duration = Duration::from_millis(50);
    within(async {
        let (heartbeat, mut forgotten) = Heartbeat::start(INTERVAL);
        let server = Fixture::new().object(heartbeat).serve().await;
        let uri = &server.uri;

        let mut a = BeatClient::subscribe(uri, "a").await;
        let mut b = BeatClient::subscribe(uri, "b").await;
        let mut c = BeatClient::subscribe(uri, "c").await;
        for client in [&mut a, &mut b, &mut c] {
            client.hear(3).await;
        }
        assert_eq!(
            b.heartbeat.send::<usize>("subscribers", ()).await.unwrap(),
            3
        );

        // a unsubscribes. Beats sent before the cancel may still be on their way (the
        // cancel answers the last one sent); none is sent after it.
        let last: Option<u64> = a.subscription.send("cancel", ()).await.unwrap();
        let last = last.unwrap();
        assert_eq!(
            forgotten.recv().await.unwrap(),
            ("a".to_owned(), "cancelled")
        );
        assert_eq!(
            b.heartbeat.send::<usize>("subscribers", ()).await.unwrap(),
            2
        );
        // Three more ticks go by for b (the ticks b hears are consecutive, so that is
        // a known number of beats), the network settles ...
        let heard_up_to = b.heard.last().unwrap().0;
        b.hear(usize::try_from((last + 3).saturating_sub(heard_up_to)).unwrap())
            .await;
        server.vat.sync().await;
        // ... and a heard every tick from its first to `last`, and nothing after.
        a.heard.extend(take_all(&mut a.inbox));
        assert!(a.consecutive(), "{:?}", a.heard);
        assert_eq!(a.heard.last().unwrap().0, last);
        assert!(b.heard.last().unwrap().0 >= last + 3);

        // c's vat vanishes without a word: the server forgets it.
        c.vat.shutdown().await;
        let (name, why) = forgotten.recv().await.unwrap();
        assert_eq!(name, "c", "forgot {name} ({why})");
        assert_eq!(
            b.heartbeat.send::<usize>("subscribers", ()).await.unwrap(),
            1
        );

        // b heard one beat per interval all along: none lost, none doubled, and never
        // faster than the interval (by the server's clock: arrival times would measure
        // the network too).
        b.hear(2).await;
        assert!(b.consecutive(), "{:?}", b.heard);
        let interval = u64::try_from(INTERVAL.as_micros()).unwrap();
        for w in b.heard.windows(2) {
            assert!(w[1].1 - w[0].1 >= interval, "too fast: {:?}", b.heard);
        }
        assert!(forgotten.try_recv().is_err(), "b was not forgotten");

        a.vat.shutdown().await;
        b.vat.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

// ---- 8. Work spread over several vats (Racket places, Julia @spawn, Mathematica) ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Partial {
    worker: String,
    from: u64,
    to: u64,
    primes: u64,
}

fn count_primes(from: u64, to: u64) -> u64 {
    (from..to)
        .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// A worker: `count_primes(from, to)` counts the primes in `from..to` on a blocking
/// thread. `all_started` is test instrumentation, shared by the four workers of one
/// process: each answers only once all four jobs have started, so a coordinator that
/// waited for one answer before sending the next job would never finish.
struct Worker {
    name: String,
    all_started: Arc<tokio::sync::Barrier>,
}

impl Object for Worker {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "count_primes" => match args.decode::<(u64, u64)>() {
                Ok((from, to)) => {
                    let worker = self.name.clone();
                    let all_started = self.all_started.clone();
                    Reply::later(async move {
                        all_started.wait().await;
                        let primes = tokio::task::spawn_blocking(move || count_primes(from, to))
                            .await
                            .map_err(|e| Broken::failed(format!("worker_failed: {e}")))?;
                        Ok(Partial {
                            worker,
                            from,
                            to,
                            primes,
                        })
                    })
                }
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_spreads_over_four_worker_vats_and_combines() {
    within(async {
        let all_started = Arc::new(tokio::sync::Barrier::new(4));
        let mut workers = Vec::new();
        for i in 0..4 {
            let worker = Worker {
                name: format!("worker{i}"),
                all_started: all_started.clone(),
            };
            workers.push(Fixture::new().object(worker).serve().await);
        }

        // The coordinator sends one job to each worker without waiting, then gathers
        // the four promises.
        let coordinator = start_client().await;
        let jobs: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(i, worker)| {
                let from = i as u64 * 5000;
                coordinator
                    .enliven(&worker.uri)
                    .send::<Partial>("count_primes", (from, from + 5000))
            })
            .collect();
        let mut partials = Vec::new();
        for job in jobs {
            partials.push(job.await.unwrap());
        }
        let total: u64 = partials.iter().map(|p| p.primes).sum();

        let expected: Vec<Partial> = [669, 560, 525, 508]
            .into_iter()
            .enumerate()
            .map(|(i, primes)| Partial {
                worker: format!("worker{i}"),
                from: i as u64 * 5000,
                to: (i as u64 + 1) * 5000,
                primes,
            })
            .collect();
        assert_eq!(partials, expected);
        assert_eq!(total, 2262); // the primes below 20,000
        assert_eq!(total, count_primes(0, 20_000));

        coordinator.shutdown().await;
        for worker in workers {
            worker.vat.shutdown().await;
        }
    })
    .await;
}

// ---- 9. Remote time service with a callback (Ruby's dRuby) ----

fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `now()` answers the server's clock in milliseconds since the epoch;
/// `tell_me(callback, times)` calls `callback.time(now)` that many times, one after
/// another, and answers what the callback answered each time.
fn time_server(method: &str, args: Args) -> Reply {
    match method {
        "now" => Reply::ok(millis_now()),
        "tell_me" => match args.decode::<(Ref, u32)>() {
            Ok((callback, times)) => Reply::later(async move {
                let mut answers = Vec::new();
                for _ in 0..times.min(100) {
                    answers.push(callback.send::<String>("time", (millis_now(),)).await?);
                }
                Ok(answers)
            }),
            Err(e) => Reply::err(e),
        },
        _ => Reply::unknown_method(method),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_service_answers_and_calls_back() {
    within(async {
        // The client does not listen: the callback reaches it over the session it
        // opened.
        let c = Fixture::new().object(time_server).connect().await;
        let clock = &c.obj;

        let before = millis_now();
        let now: u64 = clock.send("now", ()).await.unwrap();
        let after = millis_now();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );

        let heard = Arc::new(Mutex::new(Vec::new()));
        let callback = Ref::from_object({
            let heard = heard.clone();
            move |method: &str, args: Args| match method {
                "time" => args
                    .decode::<(u64,)>()
                    .map(|(t,)| {
                        lock(&heard).push(t);
                        format!("thanks for {t}")
                    })
                    .into(),
                _ => Reply::unknown_method(method),
            }
        });
        let before = millis_now();
        let answers: Vec<String> = clock.send("tell_me", (callback, 3)).await.unwrap();
        let after = millis_now();
        let heard = lock(&heard).clone();
        assert_eq!(heard.len(), 3);
        assert!(heard.windows(2).all(|w| w[0] <= w[1]), "{heard:?}");
        assert!(before <= heard[0] && heard[2] <= after, "{heard:?}");
        let expected: Vec<String> = heard.iter().map(|t| format!("thanks for {t}")).collect();
        assert_eq!(answers, expected);

        c.stop().await;
    })
    .await;
}

// ---- 10. A topic store (Perl 6's JSON server) ----

/// Topics holding arbitrary values: `set(topic, value)` answers the previous value (or
/// null), `get(topic)` the value (or fails with `no_such_topic`), `delete(topic)` whether
/// there was one, `dump()` them all.
#[derive(Default)]
struct TopicStore(Mutex<BTreeMap<String, Value>>);

impl Object for TopicStore {
    fn call(&self, method: &str, args: Args) -> Reply {
        let mut topics = lock(&self.0);
        match method {
            "set" => args
                .decode::<(String, Value)>()
                .map(|(topic, value)| topics.insert(topic, value))
                .into(),
            "get" => args
                .decode::<(String,)>()
                .and_then(|(topic,)| {
                    topics
                        .get(&topic)
                        .cloned()
                        .ok_or_else(|| Broken::failed(format!("no_such_topic: {topic}")))
                })
                .into(),
            "delete" => args
                .decode::<(String,)>()
                .map(|(topic,)| topics.remove(&topic).is_some())
                .into(),
            "dump" => Reply::ok(&*topics),
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_store_sets_gets_deletes_and_dumps() {
    within(async {
        let server = Fixture::new().object(TopicStore::default()).serve().await;
        let uri = &server.uri;
        let writer_vat = start_client().await;
        let reader_vat = start_client().await;
        let writer = writer_vat.enliven(uri);
        let reader = reader_vat.enliven(uri);

        let weather = Value::Map(vec![
            (Value::Text("city".into()), Value::Text("Oslo".into())),
            (Value::Text("celsius".into()), Value::Float(-3.5)),
            (
                Value::Text("hourly".into()),
                Value::Array(vec![Value::Integer(1.into()), Value::Null]),
            ),
        ]);
        let previous: Option<Value> = writer.send("set", ("weather", &weather)).await.unwrap();
        assert_eq!(previous, None);
        writer
            .send::<Option<Value>>("set", ("answer", 41))
            .await
            .unwrap();
        let previous: Option<Value> = writer.send("set", ("answer", 42)).await.unwrap();
        assert_eq!(previous, Some(Value::Integer(41.into())));
        writer
            .send::<Option<Value>>("set", ("motd", "hello"))
            .await
            .unwrap();

        // Another client sees the same store.
        assert_eq!(reader.send::<u64>("get", ("answer",)).await.unwrap(), 42);
        assert_eq!(
            reader.send::<Value>("get", ("weather",)).await.unwrap(),
            weather
        );
        assert!(reader.send::<bool>("delete", ("motd",)).await.unwrap());
        assert!(!reader.send::<bool>("delete", ("motd",)).await.unwrap());
        let missing = writer.send::<Value>("get", ("motd",)).await.unwrap_err();
        assert_eq!(missing.to_string(), "failed: no_such_topic: motd");

        let dump: BTreeMap<String, Value> = writer.send("dump", ()).await.unwrap();
        assert_eq!(
            dump,
            BTreeMap::from([
                ("answer".to_owned(), Value::Integer(42.into())),
                ("weather".to_owned(), weather),
            ])
        );

        writer_vat.shutdown().await;
        reader_vat.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

// ---- 11. Echo until BYE (the TCP echo server) ----

/// `connect()` answers a new echo session: a connection, as an object.
fn echo_server(method: &str, _args: Args) -> Reply {
    match method {
        "connect" => Reply::object(EchoSession::default()),
        _ => Reply::unknown_method(method),
    }
}

/// `line(text)` answers `text`, until the line `BYE`, which is answered and closes the
/// session for good.
#[derive(Default)]
struct EchoSession {
    closed: AtomicBool,
}

impl Object for EchoSession {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "line" => match args.decode::<(String,)>() {
                Ok(_) if self.closed.load(Ordering::SeqCst) => Reply::err(Broken::failed(
                    "session_closed: this echo session ended with BYE; connect again",
                )),
                Ok((line,)) => {
                    if line == "BYE" {
                        self.closed.store(true, Ordering::SeqCst);
                    }
                    Reply::ok(line)
                }
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_session_echoes_until_bye_then_refuses() {
    within(async {
        let c = Fixture::new().object(echo_server).connect().await;
        let echo = c.obj;

        // Connecting and the first line go together (pipelined).
        let session = echo.send_ref("connect", ());
        for line in ["hello", "", "  spaces  ", "BYE"] {
            let back: String = session.send("line", (line,)).await.unwrap();
            assert_eq!(back, line);
        }
        let closed = session
            .send::<String>("line", ("anyone?",))
            .await
            .unwrap_err();
        assert_eq!(closed.kind(), BrokenKind::Failed);
        assert_eq!(error_code(&closed), Some("session_closed"));

        // Lines sent together still meet BYE in order: before it they echo, after it
        // they fail.
        let other = echo.send_ref("connect", ());
        let sent: Vec<_> = ["a", "BYE", "b", "c"]
            .iter()
            .map(|line| other.send::<String>("line", (*line,)))
            .collect();
        let mut results = Vec::new();
        for s in sent {
            results.push(s.await.map_err(|b| error_code(&b).map(str::to_owned)));
        }
        assert_eq!(
            results,
            [
                Ok("a".to_owned()),
                Ok("BYE".to_owned()),
                Err(Some("session_closed".to_owned())),
                Err(Some("session_closed".to_owned())),
            ]
        );

        // Closed sessions are garbage like any other object once dropped.
        drop((session, other, echo));
        drained(&[&c.client, &c.server.vat]).await;
        c.client.shutdown().await;
        c.server.vat.shutdown().await;
    })
    .await;
}

// ---- 12. Many clients at once (the threaded-server question) ----

/// `open()` answers a new running total; `opened()` how many were opened.
#[derive(Default)]
struct Adder {
    opened: Arc<AtomicUsize>,
}

impl Object for Adder {
    fn call(&self, method: &str, _args: Args) -> Reply {
        match method {
            "open" => {
                self.opened.fetch_add(1, Ordering::SeqCst);
                Reply::object(RunningTotal::default())
            }
            "opened" => Reply::ok(self.opened.load(Ordering::SeqCst)),
            _ => Reply::unknown_method(method),
        }
    }
}

#[derive(Default)]
struct RunningTotal(AtomicU64);

impl Object for RunningTotal {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "add" => args
                .decode::<(u64,)>()
                .map(|(n,)| self.0.fetch_add(n, Ordering::SeqCst) + n)
                .into(),
            "total" => Reply::ok(self.0.load(Ordering::SeqCst)),
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_at_once_each_get_their_own_total() {
    const CLIENTS: u64 = 200;
    const ADDS: u64 = 10;
    within(async {
        let server = Fixture::new().object(Adder::default()).serve().await;
        let uri = &server.uri;

        // Every client a vat of its own, all at once, no turn-taking: nothing is held
        // up by another client (the server runs one task per session, not a thread).
        let mut running = Vec::new();
        for i in 0..CLIENTS {
            let uri = uri.clone();
            running.push(tokio::spawn(async move {
                let vat = start_client().await;
                let total = vat.enliven(&uri).send_ref("open", ());
                for k in 0..ADDS {
                    total.send_only("add", (i * 100 + k,));
                }
                let sum: u64 = total.send("total", ()).await.unwrap();
                (i, sum, vat)
            }));
        }
        let mut vats = Vec::new();
        for task in running {
            let (i, sum, vat) = task.await.unwrap();
            assert_eq!(
                sum,
                (0..ADDS).map(|k| i * 100 + k).sum::<u64>(),
                "client {i}"
            );
            vats.push(vat);
        }

        // They are all connected at once, each in a session of its own.
        let stats = server.vat.stats().await;
        assert_eq!(stats.sessions.len(), CLIENTS as usize);
        assert!(stats.sessions.iter().all(|s| s.inbound));
        let probe = vats[0].enliven(uri);
        assert_eq!(
            probe.send::<usize>("opened", ()).await.unwrap(),
            CLIENTS as usize
        );

        let mut closing = Vec::new();
        for vat in vats {
            closing.push(tokio::spawn(async move { vat.shutdown().await }));
        }
        for task in closing {
            task.await.unwrap();
        }
        server.vat.shutdown().await;
    })
    .await;
}

// ---- 13. Remote computation (Oz's `compute`) ----

/// `map(list, f)` calls `f.apply(x)` for every element, all at once, and answers the
/// results in order. The code of `f` never travels: `f` is a reference to an object in
/// the caller's vat, and `apply` is all the server can do with it.
fn mapper(method: &str, args: Args) -> Reply {
    match method {
        "map" => match args.decode::<(Vec<i64>, Ref)>() {
            Ok((list, f)) => Reply::later(async move {
                let applied: Vec<_> = list.iter().map(|x| f.send::<i64>("apply", (x,))).collect();
                let mut results = Vec::with_capacity(applied.len());
                for result in applied {
                    results.push(result.await?);
                }
                Ok(results)
            }),
            Err(e) => Reply::err(e),
        },
        _ => Reply::unknown_method(method),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_map_calls_back_a_function_object() {
    within(async {
        let c = Fixture::new().object(mapper).connect().await;
        let remote = &c.obj;

        let calls = Arc::new(AtomicUsize::new(0));
        let square_plus_one = Ref::from_object({
            let calls = calls.clone();
            move |method: &str, args: Args| match method {
                "apply" => args
                    .decode::<(i64,)>()
                    .and_then(|(x,)| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        if x < 0 {
                            Err(Broken::failed(format!("negative_input: {x}")))
                        } else {
                            Ok(x * x + 1)
                        }
                    })
                    .into(),
                _ => Reply::unknown_method(method),
            }
        });

        let list: Vec<i64> = (0..20).collect();
        let mapped: Vec<i64> = remote.send("map", (&list, &square_plus_one)).await.unwrap();
        assert_eq!(mapped, list.iter().map(|x| x * x + 1).collect::<Vec<_>>());
        assert_eq!(calls.load(Ordering::SeqCst), 20);

        let empty: Vec<i64> = remote
            .send("map", (Vec::<i64>::new(), &square_plus_one))
            .await
            .unwrap();
        assert_eq!(empty, []);

        // The function's own error comes back through the server unchanged.
        let failed = remote
            .send::<Vec<i64>>("map", (vec![1, -2, 3], &square_plus_one))
            .await
            .unwrap_err();
        assert_eq!(failed, Broken::failed("negative_input: -2"));

        // Nor can the server do anything with `f` but what `f` offers.
        let not_a_function =
            Ref::from_object(|method: &str, _: Args| Reply::unknown_method(method));
        let refused = remote
            .send::<Vec<i64>>("map", (vec![1], not_a_function))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), BrokenKind::UnknownMethod);

        c.stop().await;
    })
    .await;
}
