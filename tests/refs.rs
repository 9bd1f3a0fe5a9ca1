//! References between peers, over real TLS on 127.0.0.1: references inside arguments
//! and results, coming home, three vats, passing promises, `when_broken`, the
//! lost-client hook, equality, and distributed GC (every table drains).

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use captp::{Args, Broken, BrokenKind, Object, Ref, Reply, VatId};
use common::{Fixture, Note, drained, limits, lock, start_client, start_server, within};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A callback that records what it is called with.
struct Recorder(mpsc::UnboundedSender<String>);

impl Object for Recorder {
    fn call(&self, method: &str, args: Args) -> Reply {
        match (method, args.decode::<(String,)>()) {
            ("hear", Ok((text,))) => {
                let _ = self.0.send(text);
                Reply::ok(())
            }
            (_, Err(e)) => Reply::err(e),
            _ => Reply::unknown_method(method),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Subscription {
    name: String,
    listener: Ref,
}

/// A hub: `subscribe(Subscription)` keeps the listener, `say(text)` calls every listener,
/// `echo(Ref)` hands a reference straight back, `hold(Ref)` keeps one, `call_held(text)`
/// calls the held one, `make()` returns a new object, `twice()` returns the same object
/// in a Vec twice.
#[derive(Default)]
struct Hub {
    listeners: Mutex<Vec<Ref>>,
    held: Mutex<Option<Ref>>,
    made: Mutex<Option<Ref>>,
    lost: Option<mpsc::UnboundedSender<VatId>>,
}

impl Object for Hub {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "subscribe" => match args.decode::<(Subscription,)>() {
                Ok((sub,)) => {
                    lock(&self.listeners).push(sub.listener);
                    Reply::ok(sub.name)
                }
                Err(e) => Reply::err(e),
            },
            "say" => match args.decode::<(String,)>() {
                Ok((text,)) => {
                    let listeners = lock(&self.listeners).clone();
                    Reply::later(async move {
                        for l in listeners {
                            l.send::<()>("hear", (text.clone(),)).await?;
                        }
                        Ok(())
                    })
                }
                Err(e) => Reply::err(e),
            },
            "echo" => match args.decode::<(Ref,)>() {
                Ok((r,)) => Reply::reference(r),
                Err(e) => Reply::err(e),
            },
            "hold" => match args.decode::<(Ref,)>() {
                Ok((r,)) => {
                    *lock(&self.held) = Some(r);
                    Reply::ok(())
                }
                Err(e) => Reply::err(e),
            },
            "drop_held" => {
                lock(&self.held).take();
                lock(&self.listeners).clear();
                Reply::ok(())
            }
            "tell_held" => match (args.decode::<(String,)>(), lock(&self.held).clone()) {
                (Ok((method,)), Some(r)) => {
                    let _ = r.send_only(&method, ());
                    Reply::ok(())
                }
                (Err(e), _) => Reply::err(e),
                (_, None) => Reply::err(Broken::failed("nothing held")),
            },
            "call_held" => match (args.decode::<(String,)>(), lock(&self.held).clone()) {
                (Ok((text,)), Some(r)) => {
                    Reply::later(async move { r.send::<()>("hear", (text,)).await })
                }
                (Err(e), _) => Reply::err(e),
                (_, None) => Reply::err(Broken::failed("nothing held")),
            },
            "make" => Reply::object(Counter::default()),
            "make_hub" => Reply::object(Hub::default()),
            "name" => Reply::ok("hub"),
            // Waits for a promise passed in and answers with the number it settled to.
            "await_value" => match args.decode::<(Ref,)>() {
                Ok((p,)) => Reply::later(async move { p.when_settled::<usize>().await }),
                Err(e) => Reply::err(e),
            },
            // Waits for a promise passed in to settle to an object, then calls it.
            "await_next" => match args.decode::<(Ref,)>() {
                Ok((p,)) => Reply::later(async move {
                    let counter: Ref = p.when_settled().await?;
                    counter.send::<usize>("next", ()).await
                }),
                Err(e) => Reply::err(e),
            },
            // Pipelines on a promise passed in, without waiting for it.
            "next_on" => match args.decode::<(Ref,)>() {
                Ok((p,)) => {
                    let next = p.send::<usize>("next", ());
                    Reply::later(next)
                }
                Err(e) => Reply::err(e),
            },
            "hold_many" => match args.decode::<(Vec<Ref>,)>() {
                Ok((refs,)) => Reply::ok(refs.len()),
                Err(e) => Reply::err(e),
            },
            "same_twice" => {
                let r = lock(&self.made)
                    .get_or_insert_with(|| Ref::from_object(Counter::default()))
                    .clone();
                Reply::ok(vec![r.clone(), r])
            }
            _ => Reply::unknown_method(method),
        }
    }

    fn lost_client(&self, peer: VatId) {
        if let Some(lost) = &self.lost {
            let _ = lost.send(peer);
        }
    }
}

#[derive(Default)]
struct Counter(AtomicUsize);

impl Object for Counter {
    fn call(&self, method: &str, _args: Args) -> Reply {
        match method {
            "next" => Reply::ok(self.0.fetch_add(1, Ordering::SeqCst) + 1),
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_in_a_struct_are_called_back_and_released() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener = Ref::from_object(Recorder(tx));
        let name: String = hub
            .send(
                "subscribe",
                (Subscription {
                    name: "ada".into(),
                    listener: listener.clone(),
                },),
            )
            .await
            .unwrap();
        assert_eq!(name, "ada");
        hub.send::<()>("say", ("hello",)).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), "hello");

        // The server drops its reference: the client's export goes away.
        hub.send::<()>("drop_held", ()).await.unwrap();
        drop(hub);
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_coming_home_is_the_local_object() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mine = Ref::from_object(Recorder(tx));
        let back: Ref = hub.send("echo", (mine.clone(),)).await.unwrap();
        assert_eq!(back, mine, "the same local object, not a proxy");
        // Calling it does not touch the network: the server is not involved.
        back.send::<()>("hear", ("local",)).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), "local");
        drop((back, mine, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_objects_pipeline_and_compare_equal() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        // Pipelined: `next` goes to the counter before `make` has answered.
        let counter = hub.send_ref("make", ());
        assert_eq!(counter.send::<usize>("next", ()).await.unwrap(), 1);
        assert_eq!(counter.send::<usize>("next", ()).await.unwrap(), 2);
        // The same object, arrived twice in one message and again in another: equal.
        let pair: Vec<Ref> = hub.send("same_twice", ()).await.unwrap();
        let again: Vec<Ref> = hub.send("same_twice", ()).await.unwrap();
        assert_eq!(pair[0], pair[1]);
        assert_eq!(pair[0], again[0]);
        assert_ne!(pair[0], counter);
        drop((pair, again, counter, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

/// The tables of the only session `vat` has.
async fn only_tables(vat: &captp::Vat) -> captp::Tables {
    let stats = vat.stats().await;
    assert_eq!(stats.sessions.len(), 1, "{stats:?}");
    stats.sessions[0].tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promise_only_pipelined_on_exports_nothing_until_its_result_is_wanted() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        // Quiet questions need the server's `hello` (version 3) to have arrived.
        assert_eq!(hub.send::<String>("name", ()).await.unwrap(), "hub");
        // `make` is asked quiet (PROTOCOL.md 9.15): `next` goes to the counter it makes,
        // and the counter itself never crosses the wire.
        let counter = hub.send_ref("make", ());
        assert_eq!(counter.send::<usize>("next", ()).await.unwrap(), 1);
        c.client.sync().await;
        let server = only_tables(&c.server.vat).await;
        let client = only_tables(&c.client).await;
        // Only the bootstrapped hub is exported; the server keeps `make`'s answer (the
        // client still holds the promise) and the client its question, besides the
        // bootstrap's (the hub reference pipelines on it).
        assert_eq!((server.exports, server.answers), (1, 1), "{server:?}");
        assert_eq!((client.imports, client.questions), (1, 2), "{client:?}");
        // Wanting the result asks for it: the counter arrives as a reference.
        let settled: Ref = counter.when_settled().await.unwrap();
        assert_eq!(settled.send::<usize>("next", ()).await.unwrap(), 2);
        assert_eq!(only_tables(&c.server.vat).await.exports, 2);
        // A quiet promise that broke says so once something watches it.
        let broken = hub.send_ref("no_such_method", ());
        assert_eq!(broken.when_broken().await.kind(), BrokenKind::UnknownMethod);
        drop((settled, counter, broken, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_chain_ends_with_every_table_empty() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        assert_eq!(hub.send::<String>("name", ()).await.unwrap(), "hub");
        // Each `make` is asked quiet and pipelined on by the next hop; every promise but
        // the last is dropped at once, so its `finish` leaves before its answer settles.
        let mut node = hub.clone();
        for _ in 0..50 {
            node = node.send_ref("make_hub", ());
        }
        assert_eq!(node.send::<String>("name", ()).await.unwrap(), "hub");
        let server = only_tables(&c.server.vat).await;
        assert_eq!(
            server.exports, 1,
            "nothing but the root was exported: {server:?}"
        );
        drop((node, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vats_a_passes_bs_object_to_c() {
    within(async {
        // B hosts a recorder; A holds a reference to it and hands it to C's hub; C
        // calls it (through A). Order is kept.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let b = Fixture::new().object(Recorder(tx)).serve().await;
        let c = Fixture::new().object(Hub::default()).serve().await;
        let a = start_client().await;
        let in_b = a.enliven(&b.uri);
        let hub_at_c = a.enliven(&c.uri);
        hub_at_c.send::<()>("hold", (in_b.clone(),)).await.unwrap();
        for i in 0..20 {
            hub_at_c.send_only("call_held", (format!("m{i}"),)).unwrap();
        }
        for i in 0..20 {
            assert_eq!(rx.recv().await.unwrap(), format!("m{i}"));
        }
        hub_at_c.send::<()>("drop_held", ()).await.unwrap();
        drop((in_b, hub_at_c));
        drained(&[&a, &b.vat, &c.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_send_through_a_proxy_stays_one_way() {
    within(async {
        // A hands B's object to C's hub; C sends one-way on it, through A's proxy. B
        // must get a one-way call too: a question would make B hold an answer for A
        // (and A hold a question for B) that nobody wants (PROTOCOL.md 9.14).
        let mut b = start_server().await;
        let c = Fixture::new().object(Hub::default()).serve().await;
        let a = start_client().await;
        let in_b = a.enliven(&b.uri);
        let hub_at_c = a.enliven(&c.uri);
        hub_at_c.send::<()>("hold", (in_b.clone(),)).await.unwrap();
        hub_at_c.send::<()>("tell_held", ("slow",)).await.unwrap();
        // B runs `slow`, which never answers.
        assert!(matches!(b.next_note().await, Note::Slow));
        // A's finish for its bootstrap of B's object follows B's return: after one round
        // trip A has the return (and has queued the finish), after a second B has the
        // finish.
        a.sync().await;
        a.sync().await;
        let stats = b.vat.stats().await;
        let from_a = stats
            .sessions
            .iter()
            .find(|s| s.peer == a.vat_id())
            .expect("B has a session with A");
        assert_eq!(from_a.tables.answers, 0, "{stats:?}");
        let stats = a.stats().await;
        let to_b = stats
            .sessions
            .iter()
            .find(|s| s.peer == b.vat.vat_id())
            .expect("A has a session with B");
        // The bootstrap of B's object is A's only question there (in_b pipelines on it).
        assert_eq!(to_b.tables.questions, 1, "{stats:?}");
        hub_at_c.send::<()>("drop_held", ()).await.unwrap();
        drop((in_b, hub_at_c));
        a.shutdown().await;
        b.vat.shutdown().await;
        c.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_promise_passed_as_an_argument_settles_at_the_receiver() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        // A promise for an object the server has not made yet, passed back to it.
        let promised = hub.send_ref("make", ());
        let echoed = hub.send_ref("echo", (promised.clone(),));
        assert_eq!(echoed.send::<usize>("next", ()).await.unwrap(), 1);
        assert_eq!(promised.send::<usize>("next", ()).await.unwrap(), 2);
        drop((echoed, promised, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_promise_breaks_what_was_pipelined_on_it_the_same_way() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        let nothing = hub.send_ref("call_held", ("x",));
        let first = nothing.send::<usize>("next", ());
        let second = nothing.send::<usize>("next", ());
        let (first, second) = (first.await.unwrap_err(), second.await.unwrap_err());
        assert_eq!(first, second);
        assert_eq!(first.kind(), BrokenKind::Failed);
        assert_eq!(nothing.when_broken().await, first);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_broken_fires_when_the_vat_goes_away_and_lost_client_is_told() {
    within(async {
        let (lost_tx, mut lost) = mpsc::unbounded_channel();
        let hub = Hub {
            lost: Some(lost_tx),
            ..Hub::default()
        };
        let c = Fixture::new().object(hub).connect().await;
        let remote = &c.obj;
        remote.send::<()>("drop_held", ()).await.unwrap();
        let watcher = tokio::spawn({
            let remote = remote.clone();
            async move { remote.when_broken().await }
        });
        c.client.shutdown().await;
        let broken = watcher.await.unwrap();
        assert_eq!(broken.kind(), BrokenKind::Disconnected);
        // The server noticed the client is gone: told once, with the client's vat ID.
        assert_eq!(lost.recv().await, Some(c.client.vat_id()));
        c.server.vat.shutdown().await;
        assert!(lost.try_recv().is_err(), "told exactly once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_does_not_keep_the_reference_it_watches_alive() {
    // Watchers on a remote object and on a promise (the fetch) wait in tasks of their
    // own. Dropping the references releases them at both vats while the watchers still
    // wait; the watchers then report the session's end.
    within(async {
        let c = common::connected().await;
        let sub: Ref = c.obj.send("sub", ("watched",)).await.unwrap();
        let on_object = tokio::spawn(sub.when_broken());
        let on_promise = tokio::spawn(c.obj.when_broken());
        let server = c.server;
        drop(sub);
        drop(c.obj);
        drained(&[&c.client, &server.vat]).await;
        let stats = server.vat.stats().await;
        assert_eq!(
            stats.sessions.len(),
            1,
            "the session itself stays: {stats:?}"
        );
        assert!(!on_object.is_finished() && !on_promise.is_finished());

        server.vat.shutdown().await;
        for watcher in [on_object, on_promise] {
            let broken = tokio::time::timeout(common::IO_TIMEOUT, watcher)
                .await
                .expect("the watcher fires once the session ends")
                .unwrap();
            assert_eq!(broken.kind(), BrokenKind::Disconnected, "{broken}");
        }
        c.client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_promise_settles_to_data_an_object_or_broken_and_can_be_pipelined_on() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        let counter = hub.send_ref("make", ());

        // To data: a promise for `next()` (not yet answered when it is passed).
        let number = counter.send_ref("next", ());
        let got: usize = hub.send("await_value", (number,)).await.unwrap();
        assert_eq!(got, 1);

        // To an object: a promise for a new counter, awaited there, then called.
        let fresh = hub.send_ref("make", ());
        let got: usize = hub.send("await_next", (fresh.clone(),)).await.unwrap();
        assert_eq!(got, 1);
        // ... and pipelined on by the receiver before it settled.
        let unsettled = hub.send_ref("make", ());
        let got: usize = hub.send("next_on", (unsettled,)).await.unwrap();
        assert_eq!(got, 1);

        // Broken: the receiver sees the same error the promise broke with.
        let broken = hub.send_ref("call_held", ("nobody",));
        let err = hub
            .send::<usize>("await_value", (broken.clone(),))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BrokenKind::Failed);
        assert_eq!(broken.when_settled::<Ref>().await.unwrap_err(), err);

        // The sender's own view settles the same way.
        assert_eq!(
            fresh.when_settled::<Ref>().await.unwrap(),
            fresh.when_settled::<Ref>().await.unwrap()
        );
        drop((counter, fresh, broken, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_on_cancel_a_dropped_promise_releases_what_its_result_carried() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        for _ in 0..10 {
            drop(hub.send::<Ref>("make", ()));
        }
        // The answers still come and are dropped on arrival; then everything drains.
        assert_eq!(
            hub.send::<usize>("hold_many", (Vec::<Ref>::new(),))
                .await
                .unwrap(),
            0
        );
        drop(hub);
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

/// A vat keeps within the limits its peer announced: a call with more references than
/// the peer's `max_caps` breaks locally with `too_large`, and the session goes on.
/// (A peer that ignores the limit is aborted: `tests/hostile.rs`; the import limit is
/// tested in memory, `proto::tests::limits`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_past_the_peers_announced_limit_break_that_call_only() {
    within(async {
        // The protocol minimums: smaller values would be raised to them.
        let c = Fixture::new()
            .server_limits(limits(|l| {
                l.max_imports = 64;
                l.max_caps_per_message = 16;
            }))
            .object(Hub::default())
            .connect()
            .await;
        let hub = &c.obj;
        assert_eq!(
            hub.send::<usize>("hold_many", (Vec::<Ref>::new(),))
                .await
                .unwrap(),
            0
        );
        let refs = |n: usize| -> Vec<Ref> {
            (0..n)
                .map(|_| Ref::from_object(Counter::default()))
                .collect()
        };
        let err = hub
            .send::<usize>("hold_many", (refs(17),))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BrokenKind::TooLarge, "{err}");
        assert!(err.message().contains("the peer's limit of 16"), "{err}");
        // Sixteen are fine, on the same session.
        assert_eq!(
            hub.send::<usize>("hold_many", (refs(16),)).await.unwrap(),
            16
        );
        assert!(hub.broken_reason().is_none());
        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_past_the_limit_breaks_that_call_only() {
    within(async {
        let c = Fixture::new()
            .server_limits(limits(|l| l.max_exports = 3))
            .object(Hub::default())
            .connect()
            .await;
        let hub = c.obj;
        // The hub itself is one export; two more counters fit, the third does not.
        let a: Ref = hub.send("make", ()).await.unwrap();
        let b: Ref = hub.send("make", ()).await.unwrap();
        let err = hub.send::<Ref>("make", ()).await.unwrap_err();
        assert_eq!(err.kind(), BrokenKind::TooLarge, "{err}");
        // The session is fine, and releasing one makes room again.
        assert_eq!(a.send::<usize>("next", ()).await.unwrap(), 1);
        drop(a);
        c.client.sync().await;
        let third: Ref = hub.send("make", ()).await.unwrap();
        assert_eq!(third.send::<usize>("next", ()).await.unwrap(), 1);
        drop((b, third, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

/// Regression: after a promise resolved to the caller's own object and the peer had
/// dropped its argument, calls on the promise broke with "released".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_promise_that_resolved_to_my_own_object_still_arrive() {
    within(async {
        let c = Fixture::new().object(Hub::default()).connect().await;
        let hub = c.obj;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mine = Ref::from_object(Recorder(tx));
        let echoed = hub.send_ref("echo", (mine.clone(),));
        let back: Ref = echoed.when_settled().await.unwrap();
        assert_eq!(back, mine);
        for _ in 0..3 {
            c.client.sync().await;
            c.server.vat.sync().await;
        }
        // Still the promise's path (through the server), in order, to my object.
        echoed.send::<()>("hear", ("one",)).await.unwrap();
        echoed.send::<()>("hear", ("two",)).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), "one");
        assert_eq!(rx.recv().await.unwrap(), "two");
        drop((echoed, back, mine, hub));
        drained(&[&c.client, &c.server.vat]).await;
    })
    .await;
}

/// Regression: a callback a method sent before answering could arrive after the answer
/// (the answer was written straight away while the callback waited in the session's
/// command queue: 70-80 times in 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_sent_before_answering_arrives_before_the_answer() {
    within(async {
        let poked = |method: &str, args: Args| match (method, args.decode::<(Ref,)>()) {
            ("poke", Ok((listener,))) => {
                let _ = listener.send_only("hear", ("before the answer",));
                Reply::ok(())
            }
            (_, Err(e)) => Reply::err(e),
            _ => Reply::unknown_method(method),
        };
        let c = Fixture::new().object(poked).connect().await;
        let hub = &c.obj;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener = Ref::from_object(Recorder(tx));
        for i in 0..100 {
            hub.send::<()>("poke", (listener.clone(),)).await.unwrap();
            // Incoming calls run on the session task in frame order, so if the callback
            // came first it has already been recorded when the answer resolves.
            assert_eq!(
                rx.try_recv().ok().as_deref(),
                Some("before the answer"),
                "the answer overtook the callback on round {i}"
            );
        }
        assert!(rx.try_recv().is_err());
    })
    .await;
}
