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
use std::sync::{Arc, Mutex};

use captp::{Args, Broken, Limits, Object, Ref, Reply, SturdyRef, Vat, VatId};

use common::{drained, limits, lock, within};

/// B's service: records, per stream, the numbers sent to it and who delivered each
/// call (the caller's vat ID: the introducer while calls go through it, the recipient
/// once they come directly).
#[derive(Clone, Default)]
struct Service(Arc<Mutex<Log>>);

#[derive(Default)]
struct Log {
    streams: BTreeMap<String, Vec<u64>>,
    callers: Vec<Option<VatId>>,
}

impl Object for Service {
    fn call(&self, method: &str, args: Args) -> Reply {
        lock(&self.0).callers.push(args.caller());
        match method {
            "note" => match args.decode::<(String, u64)>() {
                Ok((stream, n)) => {
                    let mut log = lock(&self.0);
                    let seen = log.streams.entry(stream).or_default();
                    // E-order, checked at every delivery: numbers of one stream arrive
                    // in the order they were sent.
                    let in_order = seen.last().is_none_or(|last| n == last + 1);
                    seen.push(n);
                    if in_order {
                        Reply::ok(n)
                    } else {
                        Reply::err(Broken::failed(format!("out of order: {n} after {seen:?}")))
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
    let a = Vat::builder()
        .listen("127.0.0.1:0")
        .limits(a_limits)
        .start()
        .await
        .unwrap();
    let registry_uri = a.export(Registry::default()).unwrap();
    let b = Vat::builder()
        .listen("127.0.0.1:0")
        .limits(b_limits)
        .start()
        .await
        .unwrap();
    let service = Service::default();
    let registry = b.enliven(&registry_uri);
    registry
        .send::<()>("put", ("svc", Ref::from_object(service.clone())))
        .await
        .unwrap();
    let c = Vat::builder().limits(c_limits).start().await.unwrap();
    World {
        a,
        b,
        c,
        registry_uri,
        service,
    }
}

async fn default_world() -> World {
    world(Limits::default(), Limits::default(), Limits::default()).await
}

/// Calls `ping` on `r` until C's vat reports the handoff done (or failed); bounded.
async fn until_settled(c: &Vat, r: &Ref) -> captp::HandoffStats {
    for _ in 0..500 {
        let _: String = r.send("ping", ()).await.unwrap();
        let h = c.stats().await.handoffs;
        if h.direct + h.fallback > 0 {
            return h;
        }
    }
    panic!("the handoff neither completed nor failed");
}

// ---- 1. The handoff ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introduced_reference_calls_the_host_directly_and_outlives_the_introducer() {
    within(async {
        let w = default_world().await;
        let svc: Ref =
            w.c.enliven(&w.registry_uri)
                .send("get", ("svc",))
                .await
                .unwrap();
        let h = until_settled(&w.c, &svc).await;
        assert_eq!((h.direct, h.fallback), (1, 0));
        let hb = w.b.stats().await.handoffs;
        assert_eq!((hb.deposited, hb.withdrawn, hb.gifts), (1, 1, 0));
        // Calls now come from C itself, not through A.
        let _: String = svc.send("ping", ()).await.unwrap();
        assert_eq!(w.service.last_caller(), Some(w.c.vat_id()));
        // A goes away; C and B carry on.
        w.a.shutdown().await;
        for n in 0..10u64 {
            let got: u64 = svc.send("note", ("after", n)).await.unwrap();
            assert_eq!(got, n);
        }
        assert_eq!(w.service.stream("after"), (0..10).collect::<Vec<_>>());
    })
    .await;
}
