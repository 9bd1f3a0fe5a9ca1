//! The dynamic layer under typed interfaces: the car factory of the `car_factory`
//! example, written with `Object`, `Args` and `Reply` on the server and `Ref::send` on
//! the client, with methods named by strings and argument and result types chosen at
//! each call.
//!
//! Which to use: a **typed interface** (`#[captp::interface]`, as in `car_factory`)
//! whenever the methods are known when the program is written. The compiler then checks
//! names, arity and types on both sides, errors arrive as your own types, and a method
//! that answers an interface gives a typed reference to pipeline on. The **dynamic
//! layer** is for code that handles methods it does not know in advance: a forwarder, a
//! tracer or a revocable wrapper around any object (an `Object` can pass `call` on
//! unchanged), a tool that calls whatever a URI names (`dynamic methods` below asks an
//! object what it answers), data whose shape is decided at run time
//! (`ciborium::Value`), and peers written in other languages. Both speak the same wire
//! format: a method name and a CBOR array of arguments. This client drives the typed
//! `car_factory`'s cars, and `car_factory call` drives this server's (whose refusal of
//! a tank reaches it as its typed `MakeError`).
//!
//! The client drives the car before it has it: it sends `make` with `Ref::send_ref`,
//! which gives a reference to the car-to-be at once, and sends `drive` to that
//! reference. Both calls leave together and the server aims `drive` at the answer of
//! `make`, so the client gets its Vroom in one round trip.
//!
//! Run the factory in one terminal (this one, or `cargo run --example car_factory --
//! serve`, the typed one):
//!
//! ```text
//! cargo run --example dynamic -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, the client in another:
//!
//! ```text
//! cargo run --example dynamic -- call 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' red roadster
//! ```
//!
//! which prints `Vroom! I'm a red roadster car!`. Against the typed factory,
//!
//! ```text
//! cargo run --example dynamic -- methods 'captp://<vat-id>@127.0.0.1:<port>/<swiss>'
//! ```
//!
//! prints its interface and methods (`CarFactory`, then
//! `make(color: String, model: String) -> Car (pipelined)` and `check(..)`); this
//! file's hand-written factory does not answer that question (`unknown_method`). Or
//! the dynamic server and client in one process, over real TLS on 127.0.0.1:
//!
//! ```text
//! cargo run --example dynamic -- demo
//! ```
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use captp::{Args, Broken, InterfaceInfo, Object, Ref, Reply, Vat};
use serde::Serialize;

/// A car factory without a declared interface, answering the typed one's calls: serve
/// it, call it, list a server's methods, or run the demo.
#[derive(clap::Parser)]
#[command(name = "dynamic", version)]
enum Cli {
    /// Run the dynamic factory and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Make a car and drive it through untyped calls.
    Call {
        /// A factory's sturdy ref (`captp://...`), or @FILE.
        uri: String,
        /// The car's color.
        color: String,
        /// The car's model (the factory refuses a tank).
        model: String,
    },
    /// List the methods a typed server answers.
    Methods {
        /// The server's sturdy ref (`captp://...`), or @FILE.
        uri: String,
    },
    /// Run the factories and clients in one process.
    Demo,
}

/// Makes cars: `make(color, model)` answers a car; `check(model)` answers nothing, or
/// refuses a tank.
struct Factory;

/// The refusal, as the typed `car_factory` declares it: a value of the same serde shape
/// is all a typed caller needs to receive it as its own `MakeError`.
#[derive(Debug, Serialize)]
enum MakeError {
    NotACar { model: String },
}

/// Why the factory does not make `model`, if it does not.
fn refusal(model: &str) -> Option<Broken> {
    let refused = MakeError::NotACar {
        model: model.to_owned(),
    };
    // A typed application error on the wire: `failed`, a message for people, and the
    // value as data.
    (model == "tank").then(|| Broken::failed(format!("{refused:?}")).with_data(&refused))
}

impl Object for Factory {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "make" => match args.decode::<(String, String)>() {
                Ok((color, model)) => {
                    eprintln!("dynamic: make({color:?}, {model:?})");
                    match refusal(&model) {
                        Some(refused) => Reply::err(refused),
                        None => Reply::object(Car { color, model }),
                    }
                }
                Err(e) => Reply::err(e),
            },
            "check" => match args.decode::<(String,)>() {
                Ok((model,)) => match refusal(&model) {
                    Some(refused) => Reply::err(refused),
                    None => Reply::ok(()),
                },
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

/// A car: whoever holds it can drive it.
struct Car {
    color: String,
    model: String,
}

impl Object for Car {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "drive" => args
                .decode::<()>()
                .map(|()| format!("Vroom! I'm a {} {} car!", self.color, self.model))
                .into(),
            _ => Reply::unknown_method(method),
        }
    }
}

/// Makes a car and drives it, pipelined: one round trip for both calls.
async fn make_and_drive(factory: &Ref, color: &str, model: &str) -> Result<String, Broken> {
    let car = factory.send_ref("make", (color, model));
    car.send("drive", ()).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => server::serve("dynamic serve", Factory).await,
        Cli::Call { uri, color, model } => {
            let sturdy = client::parse_uri(&uri);
            let vat = Vat::builder().start().await?;
            let vroom = make_and_drive(&vat.enliven(&sturdy), &color, &model).await;
            vat.shutdown().await;
            match vroom {
                Ok(vroom) => {
                    println!("{vroom}");
                    Ok(())
                }
                Err(broken) => client::fail(&broken),
            }
        }
        Cli::Methods { uri } => {
            let sturdy = client::parse_uri(&uri);
            let vat = Vat::builder().start().await?;
            // The reserved method `captp.methods`, which every typed server answers.
            let info = InterfaceInfo::of(&vat.enliven(&sturdy)).await;
            vat.shutdown().await;
            match info {
                Ok(info) => {
                    println!("{}", info.interface);
                    for m in &info.methods {
                        println!("  {}", describe(m));
                    }
                    Ok(())
                }
                Err(broken) => client::fail(&broken),
            }
        }
        Cli::Demo => demo().await,
    }
}

/// One method as a line: `name(param: Type, ..) -> Result`, and how it is called.
fn describe(m: &captp::MethodInfo) -> String {
    let params: Vec<String> = m
        .params
        .iter()
        .map(|p| format!("{}: {}", p.name, p.ty))
        .collect();
    let how = if m.oneway {
        " (one-way)"
    } else if m.interface {
        " (pipelined)"
    } else {
        ""
    };
    format!("{}({}) -> {}{how}", m.name, params.join(", "), m.returns)
}

/// The server and the client in one process, over real TLS on 127.0.0.1.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let server = Vat::builder().listen("127.0.0.1:0").start().await?;
    let uri = server.export(Factory)?;
    println!("server vat {} exports the car factory at", server.vat_id());
    println!("  {uri}");

    let client = Vat::builder().start().await?;
    let factory = client.enliven(&uri);
    println!("client: make(\"red\", \"roadster\"), then drive() on the car it will answer");
    let vroom = make_and_drive(&factory, "red", "roadster").await;

    client.shutdown().await;
    server.shutdown().await;
    println!("{}", vroom?);
    Ok(())
}
