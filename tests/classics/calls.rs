//! Classic tasks of one service and its callers: remote errors to match on (2), structs
//! in and out (3), arbitrary data (4), a callback (9), a shared store (10), a session
//! object (11) and remote computation through a function object (13).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use captp::{Args, Broken, BrokenKind, Object, Ref, Reply};
use ciborium::Value;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::common::{Fixture, drained, lock, start_client, within};
use crate::error_code;

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
