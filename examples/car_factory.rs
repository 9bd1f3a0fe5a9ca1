//! The car factory of the OCapN test suite, as typed interfaces: `factory.make(color,
//! model)` answers a new car (an object), and `car.drive()` answers `"Vroom! I'm a
//! <color> <model> car!"`.
//!
//! `#[captp::interface]` on the two traits below generates `CarFactoryRef` and `CarRef`
//! (the client's typed references) and `CarFactoryServer` (the object the server
//! exports). `make` is declared `-> impl Car`, so `factory.make(..)` gives a `CarRef`
//! at once, before the factory has answered, and `drive()` on it is pipelined: both
//! calls leave together and cost one round trip. A model the factory does not make is
//! refused by `check` with a typed error (`MakeError`) that arrives as that type, not
//! as a string.
//!
//! On the wire a typed call is a method name and a CBOR array of arguments, as a
//! dynamic one is: the `dynamic` example's client drives this factory's cars, and
//! `dynamic methods <URI>` lists this factory's methods.
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
//! which prints `Vroom! I'm a red roadster car!` (and, for the model `tank`, says the
//! factory refused it). Or both in one process, over real TLS on 127.0.0.1:
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

use captp::{Broken, CallError, Ref, Vat};
use serde::{Deserialize, Serialize};

/// A car factory whose cars can be driven before they exist: serve it, call it, or run
/// the demo.
#[derive(clap::Parser)]
#[command(name = "car_factory", version)]
enum Cli {
    /// Run the factory and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Make a car and drive it, pipelined.
    Call {
        /// The factory's sturdy ref (`captp://...`, printed by `car_factory serve`), or @FILE.
        uri: String,
        /// The car's color.
        color: String,
        /// The car's model (the factory refuses a tank).
        model: String,
    },
    /// Run a factory and a client in one process.
    Demo,
}

/// Makes cars.
#[captp::interface]
trait CarFactory {
    /// A new car of `color` and `model`: a reference the caller can drive at once.
    fn make(&self, color: String, model: String) -> impl Car;
    /// Whether the factory makes `model`, or why not.
    fn check(&self, model: &str) -> Result<(), MakeError>;
}

/// A car: whoever holds it can drive it.
#[captp::interface]
trait Car {
    /// What the car says when driven.
    async fn drive(&self) -> Result<String, Broken>;
}

/// Why the factory refuses a model: travels to the caller as this type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum MakeError {
    /// Not a car this factory makes.
    NotACar { model: String },
}

struct Factory;

impl CarFactory for Factory {
    fn make(&self, color: String, model: String) -> CarRef {
        eprintln!("car_factory: make({color:?}, {model:?})");
        match self.check(&model) {
            Ok(()) => CarRef::serve(Roadster { color, model }),
            // A method that answers an interface fails by answering a broken reference:
            // `drive` on it, pipelined or not, breaks with this reason.
            Err(e) => CarRef::from(Ref::broken(Broken::failed(format!("{e:?}")))),
        }
    }

    fn check(&self, model: &str) -> Result<(), MakeError> {
        if model == "tank" {
            return Err(MakeError::NotACar {
                model: model.to_owned(),
            });
        }
        Ok(())
    }
}

struct Roadster {
    color: String,
    model: String,
}

impl Car for Roadster {
    async fn drive(&self) -> Result<String, Broken> {
        Ok(format!("Vroom! I'm a {} {} car!", self.color, self.model))
    }
}

/// Checks the model (a round trip), then makes a car and drives it, pipelined: one
/// more round trip for `make` and `drive` together.
async fn make_and_drive(
    factory: &CarFactoryRef,
    color: &str,
    model: &str,
) -> Result<String, CallError<MakeError>> {
    factory.check(model).await?;
    let car = factory.make(color.to_owned(), model.to_owned());
    // A `Broken` converts into `CallError::Broken`, so `?` works here too.
    Ok(car.drive().await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => server::serve("car_factory serve", CarFactoryServer::new(Factory)).await,
        Cli::Call { uri, color, model } => {
            let sturdy = client::parse_uri(&uri);
            let vat = Vat::builder().start().await?;
            let factory = CarFactoryRef::from(vat.enliven(&sturdy));
            let vroom = make_and_drive(&factory, &color, &model).await;
            vat.shutdown().await;
            match vroom {
                Ok(vroom) => {
                    println!("{vroom}");
                    Ok(())
                }
                Err(CallError::App(MakeError::NotACar { model })) => {
                    eprintln!("error: the factory does not make {model:?}");
                    std::process::exit(1);
                }
                Err(CallError::Broken(broken)) => client::fail(&broken),
            }
        }
        Cli::Demo => demo().await,
    }
}

/// The server and the client in one process, over real TLS on 127.0.0.1.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let server = Vat::builder().listen("127.0.0.1:0").start().await?;
    let uri = server.export(CarFactoryServer::new(Factory))?;
    println!("server vat {} exports the car factory at", server.vat_id());
    println!("  {uri}");

    let client = Vat::builder().start().await?;
    let factory = CarFactoryRef::from(client.enliven(&uri));
    println!("client: make(\"red\", \"roadster\"), then drive() on the car it will answer");
    let vroom = make_and_drive(&factory, "red", "roadster").await;
    println!("client: check(\"tank\")");
    let tank = factory.check("tank").await;

    client.shutdown().await;
    server.shutdown().await;
    println!("{}", vroom?);
    match tank {
        Err(CallError::App(e)) => println!("refused, as a typed error: {e:?}"),
        other => return Err(format!("expected a typed refusal, got {other:?}").into()),
    }
    Ok(())
}
