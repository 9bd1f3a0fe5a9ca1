//! The car factory of the OCapN test suite: `factory.make(color, model)` answers a new
//! car (an object), and `car.drive()` answers `"Vroom! I'm a <color> <model> car!"`.
//!
//! The client drives the car before it has it: it sends `make` with
//! `Ref::send_ref`, which gives a reference to the car-to-be at once, and sends `drive`
//! to that reference. Both calls leave together and the server aims `drive` at the
//! answer of `make`, so the client gets its Vroom in one round trip.
//!
//! Run the factory in one terminal:
//!
//! ```text
//! cargo run --example car_factory -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, the client in another:
//!
//! ```text
//! cargo run --example car_factory -- call 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' red roadster
//! ```
//!
//! which prints `Vroom! I'm a red roadster car!`. Or both in one process, over real
//! TLS on 127.0.0.1:
//!
//! ```text
//! cargo run --example car_factory -- demo
//! ```
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use captp::{Args, Broken, Object, Ref, Reply, Vat};

const USAGE: &str = "car_factory serve [--listen <addr>] [--identity <dir>]
       car_factory call <captp://URI> <color> <model>
       car_factory demo";

/// Makes cars.
struct Factory;

impl Object for Factory {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "make" => match args.decode::<(String, String)>() {
                Ok((color, model)) => {
                    eprintln!("car_factory: make({color:?}, {model:?})");
                    Reply::object(Car { color, model })
                }
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => server::serve("car_factory serve", Factory).await,
        Some("call") => {
            let [_, uri, color, model] = args.as_slice() else {
                client::usage(
                    "car_factory call: expected a URI, a color and a model",
                    USAGE,
                );
            };
            let sturdy = client::parse_uri(uri);
            let vat = Vat::builder().start().await?;
            let vroom = make_and_drive(&vat.enliven(&sturdy), color, model).await;
            vat.shutdown().await;
            match vroom {
                Ok(vroom) => {
                    println!("{vroom}");
                    Ok(())
                }
                Err(broken) => client::fail(&broken),
            }
        }
        Some("demo") if args.len() == 1 => demo().await,
        Some("demo") => client::usage("car_factory demo: expected no arguments", USAGE),
        Some(other) => client::usage(&format!("car_factory: unknown command {other:?}"), USAGE),
        None => client::usage("car_factory: expected a command", USAGE),
    }
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
