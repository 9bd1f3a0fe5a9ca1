//! Classic tasks where several vats take part: a counter kept across client runs (1),
//! a name service (5), group messaging (6), a heartbeat broadcast (7), work spread over
//! worker vats (8) and many clients at once (12).

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside the test functions (BeatClient) unwrap where a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use captp::{Args, Broken, BrokenKind, Object, Ref, Reply, Vat, VatId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::common::{Fixture, lock, start_client, within};
use crate::error_code;

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
            counter.send_only("foo", ()).unwrap(); // one-way; E-order delivers it before `bar`
            assert_eq!(counter.send::<u64>("bar", ()).await.unwrap(), expected);
            run.shutdown().await;
        }
        assert_eq!(server.vat.stats().await.sturdy_refs, 1);
        server.vat.shutdown().await;
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
        counter_ref.send_only("foo", ()).unwrap();
        counter_ref.send_only("foo", ()).unwrap();
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
                        let _ = listener.send_only("deliver", (seq, &from, &text));
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
                    total.send_only("add", (i * 100 + k,)).unwrap();
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
