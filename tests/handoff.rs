//! Three-party handoff over real TLS (PROTOCOL.md 9.16): vat A (the introducer, a
//! registry) passes vat C a reference to an object of vat B (the host); C picks it up
//! at B and calls B directly, in order with what it sent through A.
//!
//! Each test names the issue point it covers: the handoff itself, E-order across the
//! switch, failure and bounds, promises, self-handoff and GC.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside the test functions unwrap where a failure is the test failing"
)]

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use captp::Host;
use captp::internal::wire::message::ThirdParty;
use captp::internal::wire::{
    CapDescriptor, Message, Payload, ReturnResult, SINGLE_CAP_DATA, Target,
};
use captp::{
    Args, Broken, Handoff, Limits, Object, Ref, Reply, SturdyRef, SwissNumber, Vat, VatId,
};
use futures_util::FutureExt;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{RawConn, deliver, drained, limits, lock, within};

/// B's service: records, per stream, the numbers sent to it and who delivered each
/// call (the caller's vat ID: the introducer while calls go through it, the recipient
/// once they come directly).
#[derive(Clone, Default)]
struct Service(Arc<Mutex<Log>>);

#[derive(Default)]
struct Log {
    streams: BTreeMap<String, Vec<u64>>,
    callers: Vec<Option<VatId>>,
    /// Every number that arrived out of order (one-way sends cannot report it).
    violations: Vec<String>,
}

impl Object for Service {
    fn call(&self, method: &str, args: Args) -> Reply {
        lock(&self.0).callers.push(args.caller());
        match method {
            "note" => match args.decode::<(String, u64)>() {
                Ok((stream, n)) => {
                    let mut log = lock(&self.0);
                    let seen = log.streams.entry(stream.clone()).or_default();
                    // E-order, checked at every delivery: numbers of one stream arrive
                    // in the order they were sent.
                    let in_order = seen.last().map_or(n == 0, |last| n == last + 1);
                    seen.push(n);
                    if in_order {
                        Reply::ok(n)
                    } else {
                        let v = format!("{stream}: {n} after {seen:?}");
                        log.violations.push(v.clone());
                        Reply::err(Broken::failed(format!("out of order: {v}")))
                    }
                }
                Err(e) => Reply::err(e),
            },
            "ping" => Reply::ok("pong"),
            "child" => Reply::object(self.clone()),
            _ => Reply::unknown_method(method),
        }
    }
}

impl Service {
    fn stream(&self, name: &str) -> Vec<u64> {
        lock(&self.0).streams.get(name).cloned().unwrap_or_default()
    }

    fn last_caller(&self) -> Option<VatId> {
        lock(&self.0).callers.last().copied().flatten()
    }
}

/// A's registry: `put(name, ref)` keeps a reference, `get(name)` hands it on.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<BTreeMap<String, Ref>>>);

impl Object for Registry {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "put" => match args.decode::<(String, Ref)>() {
                Ok((name, r)) => {
                    lock(&self.0).insert(name, r);
                    Reply::ok(())
                }
                Err(e) => Reply::err(e),
            },
            "get" => match args.decode::<(String,)>() {
                Ok((name,)) => match lock(&self.0).get(&name) {
                    Some(r) => Reply::reference(r.clone()),
                    None => Reply::err(Broken::failed("no such name")),
                },
                Err(e) => Reply::err(e),
            },
            "drop" => {
                lock(&self.0).clear();
                Reply::ok(())
            }
            _ => Reply::unknown_method(method),
        }
    }
}

/// Three vats: A listens and exports a registry; B listens, enlivens the registry and
/// puts its service there; C does not listen.
struct World {
    a: Vat,
    b: Vat,
    c: Vat,
    registry_uri: SturdyRef,
    service: Service,
}

async fn world(a_limits: Limits, b_limits: Limits, c_limits: Limits) -> World {
    world_where([a_limits, b_limits, c_limits], true, false).await
}

/// A world whose B and C listen or not, as said (A always does).
async fn world_where(limits: [Limits; 3], b_listens: bool, c_listens: bool) -> World {
    let [a_limits, b_limits, c_limits] = limits;
    let vat = |limits: Limits, listens: bool| async move {
        let builder = Vat::builder().limits(limits);
        let builder = if listens {
            builder.listen("127.0.0.1:0")
        } else {
            builder
        };
        builder.start().await.unwrap()
    };
    let a = vat(a_limits, true).await;
    let registry_uri = a.export(Registry::default()).unwrap();
    let b = vat(b_limits, b_listens).await;
    let service = Service::default();
    let registry = b.enliven(&registry_uri);
    registry
        .send::<()>("put", ("svc", Ref::from_object(service.clone())))
        .await
        .unwrap();
    let c = vat(c_limits, c_listens).await;
    World {
        a,
        b,
        c,
        registry_uri,
        service,
    }
}

impl World {
    /// C's reference to B's service, from A's registry (introduced).
    async fn svc(&self) -> Ref {
        self.c
            .enliven(&self.registry_uri)
            .send("get", ("svc",))
            .await
            .unwrap()
    }
}

async fn default_world() -> World {
    world(Limits::default(), Limits::default(), Limits::default()).await
}

/// Waits until `r`, introduced to `c`, has settled its path; C's handoff counters then.
async fn until_settled(c: &Vat, r: &Ref) -> captp::HandoffStats {
    let outcome = r.when_handed_off().await;
    let h = c.stats().await.handoffs;
    match outcome {
        Handoff::Direct => assert!(h.direct > 0, "{h:?}"),
        Handoff::ThroughIntroducer { .. } => assert!(h.fallback > 0, "{h:?}"),
        other => panic!("not an introduced reference: {other:?}"),
    }
    h
}

// ---- 1. The handoff ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introduced_reference_calls_the_host_directly_and_outlives_the_introducer() {
    within(async {
        let w = default_world().await;
        let registry = w.c.enliven(&w.registry_uri);
        let svc: Ref = registry.send("get", ("svc",)).await.unwrap();
        // Watched from before the switch: it follows the reference to its new path.
        let mut broken = Box::pin(svc.when_broken());
        assert_eq!(svc.when_handed_off().await, Handoff::Direct);
        let h = w.c.stats().await.handoffs;
        assert_eq!((h.direct, h.fallback), (1, 0));
        let hb = w.b.stats().await.handoffs;
        assert_eq!((hb.deposited, hb.withdrawn, hb.gifts), (1, 1, 0));
        // The registry's own reference was not introduced.
        assert_eq!(
            w.c.enliven(&w.registry_uri).when_handed_off().await,
            Handoff::NotIntroduced
        );
        // Calls now come from C itself, not through A.
        let _: String = svc.send("ping", ()).await.unwrap();
        assert_eq!(w.service.last_caller(), Some(w.c.vat_id()));
        // A goes away; C and B carry on.
        w.a.shutdown().await;
        registry.when_broken().await;
        assert!(
            broken.as_mut().now_or_never().is_none(),
            "A's end broke B's object"
        );
        for n in 0..10u64 {
            let got: u64 = svc.send("note", ("after", n)).await.unwrap();
            assert_eq!(got, n);
        }
        assert_eq!(w.service.stream("after"), (0..10).collect::<Vec<_>>());
    })
    .await;
}

// ---- 2. E-order across the switch ----

/// Sends `count` numbers on stream `name` of `svc` as fast as the program can, mixing
/// questions, one-way sends and round trips (so the switch lands in the middle), and
/// checks every answer: the service answers an error for a number out of order.
async fn send_stream(svc: &Ref, name: &str, count: u64, every: u64) {
    let mut answers = Vec::new();
    for n in 0..count {
        if n % 3 == 1 {
            svc.send_only("note", (name, n)).unwrap();
        } else {
            answers.push((n, svc.send::<u64>("note", (name, n))));
        }
        if n % every == every - 1 {
            let _: String = svc.send("ping", ()).await.unwrap();
        }
    }
    for (n, answer) in answers {
        assert_eq!(answer.await.unwrap(), n, "stream {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_before_during_and_after_the_switch_arrive_in_order() {
    within(async {
        let w = default_world().await;
        let registry = w.c.enliven(&w.registry_uri);
        for round in 0..4 {
            let svc: Ref = registry.send("get", ("svc",)).await.unwrap();
            let name = format!("round {round}");
            send_stream(&svc, &name, 400, 16).await;
            let _: String = svc.send("ping", ()).await.unwrap();
            assert_eq!(w.service.stream(&name), (0..400).collect::<Vec<_>>());
            drop(svc);
            w.c.sync().await;
        }
        let callers = lock(&w.service.0).callers.clone();
        // Both paths carried calls: through A, then directly from C.
        assert!(callers.contains(&Some(w.a.vat_id())));
        assert!(callers.contains(&Some(w.c.vat_id())));
        let h = w.c.stats().await.handoffs;
        assert_eq!((h.direct, h.fallback), (4, 0));
    })
    .await;
}

// ---- 3. Failure and bounds ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_be_reached_leaves_the_reference_on_the_introducer() {
    within(async {
        // B does not listen: A knows no address for it, and C has no session with it.
        let w = world_where(Default::default(), false, false).await;
        let svc = w.svc().await;
        let h = until_settled(&w.c, &svc).await;
        assert_eq!((h.direct, h.fallback), (0, 1));
        // The reference works, through A, in order.
        send_stream(&svc, "fallback", 100, 10).await;
        assert_eq!(w.service.stream("fallback"), (0..100).collect::<Vec<_>>());
        assert_eq!(w.service.last_caller(), Some(w.a.vat_id()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_gift_leaves_the_reference_on_the_introducer() {
    within(async {
        // Gifts at B expire at once: the fence finds none, and C stays on the vine.
        let w = world(
            Limits::default(),
            limits(|l| l.gift_ttl = std::time::Duration::ZERO),
            Limits::default(),
        )
        .await;
        let svc = w.svc().await;
        let h = until_settled(&w.c, &svc).await;
        assert_eq!((h.direct, h.fallback), (0, 1));
        let hb = w.b.stats().await.handoffs;
        assert_eq!(
            (hb.deposited, hb.withdrawn, hb.gifts, hb.expired),
            (1, 0, 0, 1)
        );
        send_stream(&svc, "expired", 50, 10).await;
        assert_eq!(w.service.stream("expired"), (0..50).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_handoff_off_references_stay_proxied() {
    within(async {
        let off = limits(|l| l.handoff_timeout = std::time::Duration::ZERO);
        // Off at the introducer: it sends proxies. Off at the recipient: it keeps the vine.
        for (a_limits, c_limits) in [(off.clone(), Limits::default()), (Limits::default(), off)] {
            let w = world(a_limits, Limits::default(), c_limits).await;
            let svc = w.svc().await;
            assert_eq!(svc.when_handed_off().await, Handoff::NotIntroduced);
            send_stream(&svc, "off", 50, 10).await;
            w.c.sync().await;
            let h = w.c.stats().await.handoffs;
            assert_eq!((h.direct, h.fallback), (0, 0));
            assert_eq!(w.service.last_caller(), Some(w.a.vat_id()));
        }
    })
    .await;
}

/// The gift key a recipient withdraws with (PROTOCOL.md 9.16).
fn gift_key(depositor: VatId, gift: [u8; 32]) -> SwissNumber {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"captp-gift-v1");
    ctx.update(depositor.as_bytes());
    ctx.update(&gift);
    SwissNumber::from_bytes(ctx.finish().as_ref().try_into().unwrap())
}

/// A deposit of `gift` for `recipient` on `export`, one-way (or as `question`).
fn deposit(export: u64, gift: [u8; 32], recipient: VatId, question: Option<u64>) -> Message {
    let args = (
        ByteBuf::from(gift.to_vec()),
        ByteBuf::from(recipient.as_bytes().to_vec()),
    );
    deliver(Target::Export(export), "captp.deposit", &args, question)
}

/// A raw client of `host` that has fetched its service: the client and the export id.
async fn raw_client(host: &Vat, uri: &SturdyRef) -> (RawConn, u64) {
    let mut raw = RawConn::connect(host).await;
    let export = raw.hello_and_fetch(uri.swiss()).await;
    (raw, export)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_bounds_gifts_per_depositor_and_hands_each_once_to_its_recipient() {
    within(async {
        let b = Vat::builder()
            .listen("127.0.0.1:0")
            .limits(limits(|l| l.max_gifts = 3))
            .start()
            .await
            .unwrap();
        let uri = b.export(Service::default()).unwrap();
        // A hostile depositor, a recipient, and a fourth vat that learns everything.
        let (mut a, a_export) = raw_client(&b, &uri).await;
        let (mut c, c_export) = raw_client(&b, &uri).await;
        let (mut d, d_export) = raw_client(&b, &uri).await;
        let gifts: Vec<[u8; 32]> = (1..=5u8).map(|n| [n; 32]).collect();
        for gift in &gifts {
            a.send(&deposit(a_export, *gift, c.vat_id(), None)).await;
        }
        // A replayed deposit, asked as a question, is refused with a reason.
        a.send(&deposit(a_export, gifts[0], c.vat_id(), Some(9)))
            .await;
        let refused = a.expect_broken(9).await;
        assert_eq!(refused.kind, "too_large");
        a.ping(1).await;
        let h = b.stats().await.handoffs;
        // Three kept (max_gifts), two past the bound and the replay refused.
        assert_eq!((h.gifts, h.deposited, h.refused), (3, 3, 3));

        // The fourth vat can neither fence nor withdraw: the key is bound to the
        // depositor's and the recipient's identities.
        d.send(&deliver(
            Target::Export(d_export),
            "captp.fence",
            &(ByteBuf::from(gifts[0].to_vec()),),
            Some(2),
        ))
        .await;
        assert_eq!(d.expect_broken(2).await.kind, "unknown_object");
        d.send(&Message::Bootstrap {
            question: 3,
            swiss: gift_key(a.vat_id(), gifts[0]),
        })
        .await;
        let wrong = d.expect_broken(3).await;
        assert_eq!(wrong.kind, "unknown_object");
        assert!(wrong.message.contains("another vat"), "{}", wrong.message);
        assert_eq!(b.stats().await.handoffs.gifts, 3);

        // The recipient withdraws once: the object itself comes back.
        c.send(&Message::Bootstrap {
            question: 2,
            swiss: gift_key(a.vat_id(), gifts[0]),
        })
        .await;
        match c.expect_return(2).await.caps[..] {
            [CapDescriptor::SenderHosted(e)] => assert_eq!(e, c_export),
            ref caps => panic!("expected the service's export, got {caps:?}"),
        }
        // A replayed withdrawal, a forged key, a gift past the bound: unknown.
        for (q, key) in [
            (3, gift_key(a.vat_id(), gifts[0])),
            (4, SwissNumber::from_bytes([9; 32])),
            (5, gift_key(a.vat_id(), gifts[4])),
            (6, gift_key(d.vat_id(), gifts[1])),
        ] {
            c.send(&Message::Bootstrap {
                question: q,
                swiss: key,
            })
            .await;
            assert_eq!(c.expect_broken(q).await.kind, "unknown_object");
        }
        let h = b.stats().await.handoffs;
        assert_eq!((h.gifts, h.withdrawn), (2, 1));
        // Everyone is still served.
        for raw in [&mut a, &mut c, &mut d] {
            raw.ping(7).await;
        }
    })
    .await;
}

// ---- 4. Promises ----

/// A's registry with a promise: `later()` answers, once the test says so, with the
/// reference put under "svc".
#[derive(Clone)]
struct Later {
    registry: Registry,
    release: Arc<tokio::sync::Notify>,
}

impl Object for Later {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "later" => {
                let (registry, release) = (self.registry.clone(), self.release.clone());
                Reply::later(async move {
                    release.notified().await;
                    let svc = lock(&registry.0).get("svc").cloned();
                    svc.ok_or_else(|| Broken::failed("no svc"))
                })
            }
            _ => self.registry.call(method, args),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promise_hands_off_what_it_resolves_to_and_keeps_its_own_path() {
    within(async {
        let a = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let later = Later {
            registry: Registry::default(),
            release: Arc::new(tokio::sync::Notify::new()),
        };
        let uri = a.export(later.clone()).unwrap();
        let b = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let service = Service::default();
        b.enliven(&uri)
            .send::<()>("put", ("svc", Ref::from_object(service.clone())))
            .await
            .unwrap();
        let c = Vat::builder().start().await.unwrap();
        // C pipelines on the promise before it resolves: through A, in order.
        let promise = c.enliven(&uri).send_ref("later", ());
        let early: Vec<_> = (0..5u64)
            .map(|n| promise.send::<u64>("note", ("promise", n)))
            .collect();
        later.release.notify_one();
        for (n, answer) in early.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), n as u64);
        }
        // What it resolved to is handed off...
        let svc: Ref = promise.when_settled().await.unwrap();
        let h = until_settled(&c, &svc).await;
        assert_eq!((h.direct, h.fallback), (1, 0));
        let _: String = svc.send("ping", ()).await.unwrap();
        assert_eq!(service.last_caller(), Some(c.vat_id()));
        // ...while messages to the promise itself keep following it, through A.
        let n: u64 = promise.send("note", ("promise", 5)).await.unwrap();
        assert_eq!(n, 5);
        assert_eq!(service.last_caller(), Some(a.vat_id()));
    })
    .await;
}

// ---- Self-handoff ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_introduced_to_its_own_host_becomes_local() {
    within(async {
        // A reached B's service by sturdy ref (its session to B); B reached A's registry
        // by another session. A hands B's own service to B on that other session.
        let a = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let registry = Registry::default();
        let registry_uri = a.export(registry.clone()).unwrap();
        let b = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let service = Service::default();
        let service_uri = b.export(service.clone()).unwrap();
        let at_a: Ref = a.enliven(&service_uri);
        let _: String = at_a.send("ping", ()).await.unwrap();
        let at_a: Ref = at_a.when_settled().await.unwrap();
        lock(&registry.0).insert("svc".into(), at_a);
        let back: Ref = b
            .enliven(&registry_uri)
            .send("get", ("svc",))
            .await
            .unwrap();
        let h = until_settled(&b, &back).await;
        assert_eq!((h.direct, h.fallback), (1, 0));
        // Now a local call: no caller, no network.
        let _: String = back.send("ping", ()).await.unwrap();
        assert_eq!(service.last_caller(), None);
        assert_eq!(b.stats().await.handoffs.withdrawn, 1);
        // And A's own object, passed by A: an ordinary reference (nothing to hand off).
        lock(&registry.0).insert("own".into(), Ref::from_object(Service::default()));
        let own: Ref = b
            .enliven(&registry_uri)
            .send("get", ("own",))
            .await
            .unwrap();
        assert_eq!(own.when_handed_off().await, Handoff::NotIntroduced);
        let _: String = own.send("ping", ()).await.unwrap();
        assert_eq!(a.stats().await.handoffs.deposited, 0);
    })
    .await;
}

// ---- 5. GC ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_drains_once_everything_is_dropped() {
    within(async {
        let w = default_world().await;
        let registry = w.c.enliven(&w.registry_uri);
        let svc: Ref = registry.send("get", ("svc",)).await.unwrap();
        until_settled(&w.c, &svc).await;
        send_stream(&svc, "gc", 20, 5).await;
        // The vine is released once the switch is made: A exports only its registry
        // to C (the proxy it made for B's object is gone), and C imports only that
        // from A.
        w.c.sync().await;
        w.a.sync().await;
        let to_c = w.a.stats().await;
        let session = to_c
            .sessions
            .iter()
            .find(|s| s.peer == w.c.vat_id())
            .expect("A's session with C");
        assert_eq!(session.tables.exports, 1, "{to_c:?}");
        // After the switch, A holds nothing for C's reference: only its registry entry
        // (B's service) and the registry exports remain.
        drop(svc);
        let _: () = registry.send("drop", ()).await.unwrap();
        drop(registry);
        let b_registry = w.b.stats().await;
        assert_eq!(b_registry.handoffs.gifts, 0);
        drained(&[&w.a, &w.b, &w.c]).await;
    })
    .await;
}

// ---- 2. E-order across the switch, as a property ----

/// A TCP relay on 127.0.0.1 in front of `target`: each connection's bytes are passed on
/// in order, in chunks of random size after random pauses of up to `max_pause`, each
/// direction on its own. Put on the A-B and A-C sessions, it delays the vine at random
/// while the direct C-B path runs at full speed: the order the fence must keep.
async fn relay(target: SocketAddr, seed: u64, max_pause: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            n += 1;
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pass_on(ri, wo, seed ^ (n << 1), max_pause));
            tokio::spawn(pass_on(ro, wi, seed ^ (n << 1 | 1), max_pause));
        }
    });
    addr
}

/// Copies `from` to `to` in random chunks with random pauses, until either closes.
async fn pass_on(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seed: u64,
    max_pause: Duration,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 4096];
    loop {
        let want = rng.random_range(1..=buf.len());
        let n = match from.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if rng.random_bool(0.5) {
            tokio::time::sleep(max_pause.mul_f64(rng.random::<f64>())).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// What C does next with the reference it was introduced to.
#[derive(Debug, Clone)]
enum Step {
    /// A call whose answer is awaited later.
    Call,
    /// A one-way call.
    OneWay,
    /// A call to a new object the service returns (pipelined), then `n` calls on it.
    Pipelined(u8),
    /// Await every answer outstanding.
    AwaitAll,
    /// Give other tasks `n` turns.
    Yield(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Call),
        3 => Just(Step::OneWay),
        1 => (1..4u8).prop_map(Step::Pipelined),
        1 => Just(Step::AwaitAll),
        2 => (1..20u8).prop_map(Step::Yield),
    ]
}

/// One case: three vats, the vine through delaying relays, C's steps on the introduced
/// reference. Order at B is checked after every step; at the end, every call arrived.
async fn ordered_case(steps: Vec<Step>, seed: u64) {
    let a = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
    let registry_uri = a.export(Registry::default()).unwrap();
    let pause = Duration::from_micros(300);
    let via = |addr: SocketAddr| {
        SturdyRef::new(
            a.vat_id(),
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            addr.port(),
            registry_uri.swiss().clone(),
        )
    };
    let a_addr = a.local_addr().unwrap();
    let for_b = via(relay(a_addr, seed, pause).await);
    let for_c = via(relay(a_addr, !seed, pause).await);
    let b = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
    let service = Service::default();
    b.enliven(&for_b)
        .send::<()>("put", ("svc", Ref::from_object(service.clone())))
        .await
        .unwrap();
    let c = Vat::builder().start().await.unwrap();
    let svc: Ref = c.enliven(&for_c).send("get", ("svc",)).await.unwrap();

    let mut sent = 0u64;
    let mut children = 0u64;
    let mut answers = Vec::new();
    for step in steps {
        match step {
            Step::Call => {
                answers.push((sent, svc.send::<u64>("note", ("svc", sent))));
                sent += 1;
            }
            Step::OneWay => {
                svc.send_only("note", ("svc", sent)).unwrap();
                sent += 1;
            }
            Step::Pipelined(calls) => {
                let child = svc.send_ref("child", ());
                let stream = format!("child {children}");
                children += 1;
                for n in 0..u64::from(calls) {
                    child.send_only("note", (stream.as_str(), n)).unwrap();
                }
            }
            Step::AwaitAll => {
                for (n, answer) in answers.drain(..) {
                    assert_eq!(answer.await.unwrap(), n);
                }
            }
            Step::Yield(turns) => {
                for _ in 0..turns {
                    tokio::task::yield_now().await;
                }
            }
        }
        // Per-reference order at B, after every step.
        let violations = lock(&service.0).violations.clone();
        assert!(violations.is_empty(), "out of order at B: {violations:?}");
    }
    for (n, answer) in answers {
        assert_eq!(answer.await.unwrap(), n);
    }
    // Everything arrived, each exactly once, in order; and the handoff completed.
    let _: String = svc.send("ping", ()).await.unwrap();
    c.sync().await;
    assert_eq!(service.stream("svc"), (0..sent).collect::<Vec<_>>());
    assert!(lock(&service.0).violations.is_empty());
    assert_eq!(svc.when_handed_off().await, Handoff::Direct);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    /// Random calls on an introduced reference while the vine is delayed at random:
    /// no call on the direct path overtakes one sent through the introducer.
    #[test]
    fn calls_keep_their_order_across_the_switch_under_random_delays(
        steps in proptest::collection::vec(step(), 1..60),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(within(ordered_case(steps, seed)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_tries_every_hint_and_stays_with_the_introducer_when_none_reaches_the_host() {
    within(async {
        // A (raw) introduces C to B's object with two hints that do not reach B: a port
        // nobody listens on, and another vat (whose key is not B's).
        let b = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let other = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Vat::builder().start().await.unwrap();
        let hints = vec![
            format!("127.0.0.1:{closed}"),
            other.local_addr().unwrap().to_string(),
        ];
        let (svc, mut a) = introduced_by_raw(&c, b.vat_id(), hints).await;
        let Handoff::ThroughIntroducer { reason } = svc.when_handed_off().await else {
            panic!("the handoff cannot succeed");
        };
        // Both hints were tried, and each failure is in the reason.
        assert!(reason.contains(&closed.to_string()), "{reason}");
        assert!(
            reason.contains("vat_id_mismatch") || reason.contains("does not match"),
            "{reason}"
        );
        assert_eq!(c.stats().await.handoffs.fallback, 1);
        // The reference works, through the vine (A's export 1): no fence was sent.
        let answer = svc.send::<u64>("note", ("vine", 0));
        // Whatever bookkeeping comes first (finish, release), the call comes within a
        // few messages.
        let mut call = None;
        for _ in 0..16 {
            match a.expect_message().await {
                Message::Deliver {
                    target: Target::Export(1),
                    method,
                    question: Some(q),
                    ..
                } if method == "note" => {
                    call = Some(q);
                    break;
                }
                Message::Deliver { method, .. } => panic!("unexpected call {method}"),
                _ => {}
            }
        }
        let q = call.expect("the call reached the introducer");
        a.send(&Message::Return {
            question: q,
            result: ReturnResult::Ok(common::data_payload(&0u64)),
        })
        .await;
        assert_eq!(answer.await.unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_bounds_the_handoffs_it_makes_at_once() {
    within(async {
        // C makes no handoff at a time: every introduction stays with the introducer.
        let w = world(
            Limits::default(),
            Limits::default(),
            limits(|l| l.max_handoffs = 0),
        )
        .await;
        let svc = w.svc().await;
        let Handoff::ThroughIntroducer { reason } = svc.when_handed_off().await else {
            panic!("no handoff may start");
        };
        assert!(reason.contains("max_handoffs"), "{reason}");
        send_stream(&svc, "bounded", 30, 10).await;
        assert_eq!(w.service.last_caller(), Some(w.a.vat_id()));
        assert_eq!(w.c.stats().await.handoffs.fallback, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_held_during_the_switch_are_bounded_and_go_on_in_order_when_it_fails() {
    within(async {
        // A (raw) introduces C to B's object and holds C's fence: C holds its calls,
        // within max_unsent; then A refuses the fence, and C sends them to the vine.
        const LIMIT: usize = 16 << 10;
        const ARG: usize = 3000;
        let b = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let c = Vat::builder()
            .limits(limits(|l| l.max_unsent = LIMIT))
            .start()
            .await
            .unwrap();
        let hints = vec![b.local_addr().unwrap().to_string()];
        let (svc, mut a) = introduced_by_raw(&c, b.vat_id(), hints).await;
        // C reaches B, then fences the vine.
        let fence = next_call(&mut a).await;
        assert_eq!(fence.1, "captp.fence");
        // Calls now wait at C, up to LIMIT bytes (each counts its data, its method
        // name and 64 bytes).
        let each = 64 + "note".len() + ARG + 10;
        let fits = LIMIT / each;
        let big = "x".repeat(ARG);
        for n in 0..fits {
            svc.send_only("note", (big.as_str(), n as u64)).unwrap();
        }
        let past = svc.send_only("note", (big.as_str(), fits as u64));
        assert_eq!(
            past.map_err(|b| b.kind()),
            Err(captp::BrokenKind::TooLarge),
            "{fits} calls of about {each} bytes fill {LIMIT}"
        );
        // A refuses the fence: C stays on the vine and sends what it held, in order.
        a.send(&Message::Return {
            question: fence.0.unwrap(),
            result: ReturnResult::Err(captp::internal::wire::WireBroken {
                kind: "unknown_object".into(),
                message: "no gift".into(),
                data: None,
            }),
        })
        .await;
        let Handoff::ThroughIntroducer { reason } = svc.when_handed_off().await else {
            panic!("the fence was refused");
        };
        assert!(reason.contains("fence"), "{reason}");
        for n in 0..fits {
            let (question, method, args) = next_call(&mut a).await;
            assert_eq!((question, method.as_str()), (None, "note"), "call {n}");
            let (_, got): (String, u64) = common::decode_data(&args);
            assert_eq!(got, n as u64);
        }
    })
    .await;
}

/// A raw introducer A that `c` fetches an object from: A answers the fetch with a
/// `third_party` naming `host` with `hints` (gift 32 bytes of 7, vine export 1). The
/// reference C got, and A's end of the connection.
async fn introduced_by_raw(c: &Vat, host: VatId, hints: Vec<String>) -> (Ref, RawConn) {
    let (a_id, a_port, accepted) = common::raw_server().await;
    let uri = SturdyRef::new(
        a_id,
        Host::Ipv4(Ipv4Addr::LOCALHOST),
        a_port,
        SwissNumber::from_bytes([1; 32]),
    );
    let fetched = c.enliven(&uri);
    let mut a = accepted.await.unwrap();
    a.handshake_as_server().await;
    let question = match a.expect_message().await {
        Message::Bootstrap { question, .. } => question,
        other => panic!("expected the fetch, got {other:?}"),
    };
    a.send(&Message::Return {
        question,
        result: ReturnResult::Ok(Payload {
            data: SINGLE_CAP_DATA.to_vec().into(),
            caps: vec![CapDescriptor::ThirdParty(Box::new(ThirdParty {
                host: *host.as_bytes(),
                gift: [7; 32],
                vine: 1,
                hints,
            }))],
        }),
    })
    .await;
    (fetched.when_settled().await.unwrap(), a)
}

/// The next call the raw introducer receives on its export 1 (skipping bookkeeping):
/// its question, method and arguments.
async fn next_call(a: &mut RawConn) -> (Option<u64>, String, Payload) {
    for _ in 0..16 {
        match a.expect_message().await {
            Message::Deliver {
                target: Target::Export(1),
                method,
                question,
                payload,
                ..
            } => return (question, method, payload),
            Message::Deliver { target, .. } => panic!("a call to {target:?}"),
            _ => {}
        }
    }
    panic!("no call among 16 messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_only_pipelined_on_deposits_nothing_until_it_is_wanted() {
    within(async {
        let w = default_world().await;
        let registry = w.c.enliven(&w.registry_uri);
        // The session is up, so the pipelined call below is a quiet question: A keeps
        // the reference it answers and names it to nobody.
        let _: Ref = registry.when_settled().await.unwrap();
        let svc = registry.send_ref("get", ("svc",));
        send_stream(&svc, "pipelined", 20, 5).await;
        w.c.sync().await;
        w.a.sync().await;
        assert_eq!(w.b.stats().await.handoffs.deposited, 0);
        assert_eq!(w.service.last_caller(), Some(w.a.vat_id()));
        // Wanting the result sends it, introduced: now the gift is deposited.
        let got: Ref = svc.when_settled().await.unwrap();
        assert_eq!(got.when_handed_off().await, Handoff::Direct);
        let hb = w.b.stats().await.handoffs;
        assert_eq!((hb.deposited, hb.withdrawn), (1, 1));
        // The promise keeps its path; what it resolved to is direct.
        send_stream(&got, "direct", 10, 5).await;
        assert_eq!(w.service.last_caller(), Some(w.c.vat_id()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_picks_the_gift_up_on_a_session_the_host_opened() {
    within(async {
        // C listens, and B is already connected to it: the handoff uses that session
        // and opens no other.
        let w = world_where(Default::default(), false, true).await;
        let at_c = w.c.export(Service::default()).unwrap();
        let _: String = w.b.enliven(&at_c).send("ping", ()).await.unwrap();
        let svc = w.svc().await;
        // B does not listen, so A has no address for it: only the session B opened
        // to C can carry the withdrawal.
        assert_eq!(svc.when_handed_off().await, Handoff::Direct);
        let _: String = svc.send("ping", ()).await.unwrap();
        assert_eq!(w.service.last_caller(), Some(w.c.vat_id()));
        let with_b: Vec<_> =
            w.c.stats()
                .await
                .sessions
                .into_iter()
                .filter(|s| s.peer == w.b.vat_id())
                .collect();
        assert_eq!(with_b.len(), 1, "{with_b:?}");
        assert!(with_b[0].inbound);
    })
    .await;
}
