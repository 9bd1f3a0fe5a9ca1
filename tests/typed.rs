//! Typed interfaces (`#[captp::interface]`) end to end over real TLS on 127.0.0.1: the
//! car factory pipelined, typed errors, one-way methods, a typed callback, the caller's
//! identity, interop with the dynamic layer both ways, introspection, and byte strings
//! on the wire.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use captp::internal::wire::{Message, ReturnResult, Target};
use captp::{
    Args, Broken, BrokenKind, CallContext, CallError, Interface, InterfaceInfo, Ref, Reply, Vat,
};
use common::{Fixture, RawConn, cbor, deliver, within};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

#[captp::interface]
trait CarFactory {
    /// Makes a car once the factory's gate lets it (the test holds the gate to show
    /// that calls on the car leave before the car exists).
    async fn make(&self, color: String, model: String) -> impl Car;
}

#[captp::interface]
trait Car {
    fn drive(&self) -> Result<String, Broken>;
    #[oneway]
    fn honk(&self, times: u32);
    fn honks(&self) -> u32;
    async fn refuel(&self, liters: u32) -> Result<u32, FuelError>;
    fn driver(&self, context: CallContext) -> Option<String>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum FuelError {
    TankFull { room: u32 },
    Closed,
}

struct Factory {
    gate: Arc<Semaphore>,
    started: mpsc::UnboundedSender<()>,
}

impl CarFactory for Factory {
    async fn make(&self, color: String, model: String) -> CarRef {
        let _ = self.started.send(());
        let permit = self.gate.acquire().await;
        drop(permit);
        CarRef::serve(MyCar {
            name: format!("{color} {model}"),
            honks: AtomicU32::new(0),
            fuel: AtomicU32::new(10),
        })
    }
}

struct MyCar {
    name: String,
    honks: AtomicU32,
    fuel: AtomicU32,
}

impl Car for MyCar {
    fn drive(&self) -> Result<String, Broken> {
        Ok(format!("Vroom! I'm a {} car!", self.name))
    }

    fn honk(&self, times: u32) {
        self.honks.fetch_add(times, Ordering::SeqCst);
    }

    fn honks(&self) -> u32 {
        self.honks.load(Ordering::SeqCst)
    }

    async fn refuel(&self, liters: u32) -> Result<u32, FuelError> {
        tokio::task::yield_now().await;
        let fuel = self.fuel.load(Ordering::SeqCst);
        if fuel + liters > 50 {
            return Err(FuelError::TankFull { room: 50 - fuel });
        }
        Ok(self.fuel.fetch_add(liters, Ordering::SeqCst) + liters)
    }

    fn driver(&self, context: CallContext) -> Option<String> {
        context.caller().map(|id| id.to_string())
    }
}

fn factory() -> (Factory, Arc<Semaphore>, mpsc::UnboundedReceiver<()>) {
    let gate = Arc::new(Semaphore::new(0));
    let (started, rx) = mpsc::unbounded_channel();
    let f = Factory {
        gate: gate.clone(),
        started,
    };
    (f, gate, rx)
}

fn session_frames(stats: &captp::VatStats) -> u64 {
    stats.sessions.iter().map(|s| s.frames_sent).sum()
}

/// `factory.make(..)` gives a `CarRef` at once; `drive` on it leaves before `make` is
/// answered, so both cost one round trip. Multi-threaded, so the generated server's
/// futures must be `Send`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn car_factory_pipelined_is_one_round_trip() {
    within(async {
        let (f, gate, mut started) = factory();
        let c = Fixture::new()
            .object(CarFactoryServer::new(f))
            .connect()
            .await;
        let factory = CarFactoryRef::from(c.obj.clone());
        // Settle the bootstrap first so only the two calls are counted.
        c.obj.when_settled::<Ref>().await.unwrap();
        c.client.sync().await;
        let before = session_frames(&c.client.stats().await);

        let car = factory.make("red".into(), "roadster".into());
        let vroom = car.drive();
        started.recv().await.unwrap();
        // `make` is running and held at the gate: it has not answered. Everything the
        // client sent has reached the server once `sync` returns.
        c.client.sync().await;
        let server = c.server.vat.stats().await;
        assert_eq!(server.sessions.len(), 1);
        // Both questions wait at the server: `make`, and `drive` queued on its answer.
        assert_eq!(server.sessions[0].tables.answers, 2, "{server:?}");
        // The client sent exactly two deliveries, and one ping for `sync`.
        let sent = session_frames(&c.client.stats().await) - before;
        assert_eq!(sent, 3, "two calls and one sync ping");

        gate.add_permits(1);
        assert_eq!(vroom.await.unwrap(), "Vroom! I'm a red roadster car!");
        drop(car);
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_typed_error_arrives_as_its_type() {
    within(async {
        let (f, gate, _started) = factory();
        gate.add_permits(10);
        let c = Fixture::new()
            .object(CarFactoryServer::new(f))
            .connect()
            .await;
        let car = CarFactoryRef::from(c.obj.clone()).make("blue".into(), "van".into());
        assert_eq!(car.refuel(15).await, Ok(25));
        assert_eq!(
            car.refuel(40).await,
            Err(CallError::App(FuelError::TankFull { room: 25 }))
        );
        // A dynamic caller sees `failed`, the error's Debug form, and the data.
        let b = Ref::from(car.clone())
            .send::<u32>("refuel", (40u32,))
            .await
            .unwrap_err();
        assert_eq!(b.kind(), BrokenKind::Failed);
        assert_eq!(b.message(), "TankFull { room: 25 }");
        assert_eq!(
            b.data::<FuelError>(),
            Some(FuelError::TankFull { room: 25 })
        );
        // A call that breaks for another reason stays a Broken.
        let gone = CarRef::from(Ref::broken(Broken::disconnected("test")));
        assert_eq!(
            gone.refuel(1).await,
            Err(CallError::Broken(Broken::disconnected("test")))
        );
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn oneway_methods_send_without_an_answer_and_in_order() {
    within(async {
        let (f, gate, _started) = factory();
        gate.add_permits(10);
        let c = Fixture::new()
            .object(CarFactoryServer::new(f))
            .connect()
            .await;
        let car = CarFactoryRef::from(c.obj.clone()).make("green".into(), "bus".into());
        car.honk(2);
        car.honk(3);
        // E-order: the honks arrive before the question that follows them.
        assert_eq!(car.honks().await.unwrap(), 5);
        let server = c.server.vat.stats().await;
        // One-way sends get no `return`: the server sent its `hello`, its `listen` (its
        // address, for introductions) and three returns (the bootstrap, `make` and
        // `honks`), not five.
        assert_eq!(server.sessions[0].frames_sent, 5, "{server:?}");
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_method_asking_for_its_context_gets_the_callers_vat_id() {
    within(async {
        let (f, gate, _started) = factory();
        gate.add_permits(10);
        let c = Fixture::new()
            .object(CarFactoryServer::new(f))
            .connect()
            .await;
        let car = CarFactoryRef::from(c.obj.clone()).make("red".into(), "cab".into());
        assert_eq!(
            car.driver().await.unwrap(),
            Some(c.client.vat_id().to_string())
        );
        // A call made in this vat has no remote caller.
        let local = CarRef::serve(MyCar {
            name: "toy".into(),
            honks: AtomicU32::new(0),
            fuel: AtomicU32::new(0),
        });
        assert_eq!(local.driver().await.unwrap(), None);
        c.stop().await;
    })
    .await;
}

// ---- a typed callback ----

#[captp::interface]
trait Watcher {
    #[oneway]
    fn changed(&self, key: String, value: Vec<u8>);
}

#[captp::interface]
trait Store {
    fn put(&self, key: String, value: Vec<u8>) -> Result<(), Broken>;
    fn get(&self, key: &str) -> Vec<u8>;
    fn watch(&self, watcher: WatcherRef);
    fn echo(&self, data: &[u8]) -> Vec<u8>;
    fn withdraw(&self, amount: u32) -> Result<u32, VaultError>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum VaultError {
    Insufficient { balance: u32 },
}

#[derive(Default)]
struct MemStore {
    entries: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
    watchers: std::sync::Mutex<Vec<WatcherRef>>,
}

impl Store for MemStore {
    fn put(&self, key: String, value: Vec<u8>) -> Result<(), Broken> {
        if key.is_empty() {
            return Err(Broken::failed("a key must not be empty"));
        }
        for w in common::lock(&self.watchers).iter() {
            w.changed(key.clone(), value.clone());
        }
        common::lock(&self.entries).insert(key, value);
        Ok(())
    }

    fn get(&self, key: &str) -> Vec<u8> {
        common::lock(&self.entries)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn watch(&self, watcher: WatcherRef) {
        common::lock(&self.watchers).push(watcher);
    }

    fn echo(&self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }

    fn withdraw(&self, amount: u32) -> Result<u32, VaultError> {
        match 100u32.checked_sub(amount) {
            Some(left) => Ok(left),
            None => Err(VaultError::Insufficient { balance: 100 }),
        }
    }
}

struct Seen(mpsc::UnboundedSender<(String, Vec<u8>)>);

impl Watcher for Seen {
    fn changed(&self, key: String, value: Vec<u8>) {
        let _ = self.0.send((key, value));
    }
}

#[tokio::test]
async fn a_typed_callback_passed_as_an_argument_is_called_back() {
    within(async {
        let c = Fixture::new()
            .object(StoreServer::new(MemStore::default()))
            .connect()
            .await;
        let store = StoreRef::from(c.obj.clone());
        let (tx, mut seen) = mpsc::unbounded_channel();
        store.watch(WatcherRef::serve(Seen(tx))).await.unwrap();
        store.put("k".into(), vec![1, 2, 3]).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), ("k".to_owned(), vec![1, 2, 3]));
        assert_eq!(store.get("k").await.unwrap(), vec![1, 2, 3]);
        let refused = store.put(String::new(), vec![]).await.unwrap_err();
        assert_eq!(refused, Broken::failed("a key must not be empty"));
        c.stop().await;
    })
    .await;
}

// ---- interop ----

#[tokio::test]
async fn a_typed_stub_calls_a_dynamic_object() {
    within(async {
        // A hand-written object speaking the `Store` protocol in part.
        let dynamic = |method: &str, args: Args| match method {
            "echo" => match args.decode::<(serde_bytes::ByteBuf,)>() {
                Ok((b,)) => Reply::ok(b),
                Err(e) => Reply::err(e),
            },
            "withdraw" => Reply::err(
                Broken::failed("closed").with_data(&VaultError::Insufficient { balance: 0 }),
            ),
            "put" => Reply::err(Broken::failed("read-only")),
            _ => Reply::unknown_method(method),
        };
        let c = Fixture::new().object(dynamic).connect().await;
        let store = StoreRef::from(c.obj.clone());
        assert_eq!(store.echo(&[9, 8]).await.unwrap(), vec![9, 8]);
        assert_eq!(
            store.withdraw(1).await,
            Err(CallError::App(VaultError::Insufficient { balance: 0 }))
        );
        // An error without data is a Broken, not an application error.
        assert_eq!(
            store.put("k".into(), vec![]).await,
            Err(Broken::failed("read-only"))
        );
        let missing = store.get("k").await.unwrap_err();
        assert_eq!(missing.kind(), BrokenKind::UnknownMethod);
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_dynamic_caller_calls_a_typed_server_with_exact_arity() {
    within(async {
        let c = Fixture::new()
            .object(StoreServer::new(MemStore::default()))
            .connect()
            .await;
        let got: Vec<u8> = c
            .obj
            .send("echo", (serde_bytes::Bytes::new(&[1, 2]),))
            .await
            .unwrap();
        assert_eq!(got, vec![1, 2]);
        // An array of integers decodes as bytes too (lenient on the way in).
        let got: Vec<u8> = c.obj.send("echo", (vec![3u8, 4],)).await.unwrap();
        assert_eq!(got, vec![3, 4]);
        let left: u32 = c.obj.send("withdraw", (30u32,)).await.unwrap();
        assert_eq!(left, 70);

        let extra = c
            .obj
            .send::<u32>("withdraw", (30u32, 1u32))
            .await
            .unwrap_err();
        assert_eq!(extra.kind(), BrokenKind::BadArguments);
        assert_eq!(
            extra.message(),
            "arguments do not match the method's parameters: 2 arguments were sent, more \
             than the method takes"
        );
        let wrong = c.obj.send::<u32>("withdraw", ("x",)).await.unwrap_err();
        assert_eq!(wrong.kind(), BrokenKind::BadArguments, "{wrong}");
        let unknown = c.obj.send::<u32>("steal", ()).await.unwrap_err();
        assert_eq!(unknown, Broken::unknown_method("steal"));
        c.stop().await;
    })
    .await;
}

// ---- introspection ----

#[tokio::test]
async fn an_interface_object_describes_its_methods() {
    within(async {
        let c = Fixture::new()
            .object(StoreServer::new(MemStore::default()))
            .connect()
            .await;
        let info = InterfaceInfo::of(&c.obj).await.unwrap();
        assert_eq!(info, StoreRef::info());
        assert_eq!(info.interface, "Store");
        let names: Vec<&str> = info.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["put", "get", "watch", "echo", "withdraw"]);
        let put = &info.methods[0];
        let params: Vec<(&str, &str)> = put
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.ty.as_str()))
            .collect();
        assert_eq!(params, [("key", "String"), ("value", "Vec<u8>")]);
        assert_eq!(put.returns, "Result<(), Broken>");
        assert_eq!((put.interface, put.oneway), (false, false));
        assert_eq!(info.methods[3].params[0].ty, "&[u8]");

        let car = CarRef::info();
        assert_eq!(car.methods[1].name, "honk");
        assert!(car.methods[1].oneway);
        // The context is not a parameter the caller passes.
        assert!(car.methods[4].params.is_empty());
        let factory = CarFactoryRef::info();
        assert_eq!(factory.methods[0].returns, "Car");
        assert!(factory.methods[0].interface);
        // The wire form, for tools in other languages.
        let raw: ciborium::Value = c.obj.send("captp.methods", ()).await.unwrap();
        let text = format!("{raw:?}");
        assert!(text.contains("Text(\"interface\")"), "{text}");
        c.stop().await;
    })
    .await;
}

// ---- the wire ----

/// Byte parameters and results travel as CBOR byte strings (major type 2), and a typed
/// error travels as `failed` with its data: checked byte for byte from a raw peer.
#[tokio::test]
async fn bytes_are_byte_strings_and_errors_carry_data_on_the_wire() {
    within(async {
        let server = Fixture::new()
            .object(StoreServer::new(MemStore::default()))
            .serve()
            .await;
        let mut raw = RawConn::connect(&server.vat).await;
        raw.handshake().await;
        let export = raw.bootstrap(1, server.uri.swiss()).await;

        // What the stub sends for `echo(&[1, 2, 3])`: an array of one byte string.
        let stub_args = cbor(&(serde_bytes::Bytes::new(&[1, 2, 3]),));
        assert_eq!(stub_args, [0x81, 0x43, 1, 2, 3]);
        raw.send(&deliver(
            Target::Export(export),
            "echo",
            &(serde_bytes::Bytes::new(&[1, 2, 3]),),
            Some(2),
        ))
        .await;
        let result = raw.expect_return(2).await;
        assert_eq!(
            result.data[..],
            [0x43, 1, 2, 3],
            "a byte string, not an array"
        );

        raw.send(&deliver(
            Target::Export(export),
            "withdraw",
            &(500u32,),
            Some(3),
        ))
        .await;
        let err = raw.expect_broken(3).await;
        assert_eq!(err.kind, "failed");
        assert_eq!(err.message, "Insufficient { balance: 100 }");
        let data = err.data.clone().expect("the error carries data");
        // {"Insufficient": {"balance": 100}}
        let mut expected = vec![0xa1, 0x6c];
        expected.extend_from_slice(b"Insufficient");
        expected.extend_from_slice(&[0xa1, 0x67]);
        expected.extend_from_slice(b"balance");
        expected.extend_from_slice(&[0x18, 0x64]);
        assert_eq!(data, expected);
        // The whole `return`, as the vat wrote it.
        let mut frame = Vec::new();
        Message::Return {
            question: 3,
            result: ReturnResult::Err(err),
        }
        .encode_frame(&mut frame)
        .unwrap();
        let body = &frame[4..];
        let tail: Vec<u8> = [&[0x64][..], b"data", &[0x58, 25], &expected].concat();
        assert!(body.ends_with(&tail), "{body:02x?}");
        server.vat.shutdown().await;
    })
    .await;
}

/// Interface stubs are plain data to serde, so a typed reference can be a struct
/// field and arrive as a live stub.
#[tokio::test]
async fn a_stub_travels_inside_a_struct() {
    #[derive(Serialize, Deserialize)]
    struct Subscription {
        topic: String,
        watcher: WatcherRef,
    }
    within(async {
        let (tx, mut rx) = mpsc::unbounded_channel::<Subscription>();
        let server = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let uri = server
            .export(
                move |_: &str, args: Args| match args.decode::<(Subscription,)>() {
                    Ok((s,)) => {
                        let _ = tx.send(s);
                        Reply::ok(())
                    }
                    Err(e) => Reply::err(e),
                },
            )
            .unwrap();
        let client = Vat::builder().start().await.unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let sub = Subscription {
            topic: "t".into(),
            watcher: WatcherRef::serve(Seen(seen_tx)),
        };
        client
            .enliven(&uri)
            .send::<()>("subscribe", (sub,))
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.topic, "t");
        got.watcher.changed("k".into(), vec![7]);
        assert_eq!(seen.recv().await.unwrap(), ("k".to_owned(), vec![7]));
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}
