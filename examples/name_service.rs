//! A name service (Pyro's name server, Objective-C's distributed-objects name server,
//! JoCaml's name service), done with capabilities.
//!
//! `name_service serve` runs the registry and prints its sturdy ref URI: the authority
//! to register services and look them up. A service registers by passing the registry
//! a *reference* to one of its objects, under a name; it needs no URI of its own, not
//! even a listening socket. `register` answers a *registration*, an object whose
//! `cancel()` takes the name back: only the service that registered can unregister.
//! A client looks a name up and gets the reference, live, and calls it. When a
//! service's vat goes away, its reference breaks and the registry forgets the name.
//!
//! The reference a client gets is the service's, not the registry's: captp hands it off
//! (PROTOCOL.md 9.16). If the service listens (`register --listen 127.0.0.1:0`), the
//! client connects to the service's vat itself, picks the object up there, and from then
//! on its calls go straight to the service, in order with those it made before; the
//! registry is out of the path and may even go away. A service that does not listen is
//! reached through the registry's vat, which forwards the calls.
//!
//! The registry, a registration and the greeter are typed interfaces
//! (`#[captp::interface]`, declared below). `lookup` answers an interface, so
//! `registry.lookup(name).greet(who)` is one pipelined round trip.
//!
//! Run the registry in one terminal:
//!
//! ```text
//! cargo run --example name_service -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, a greeter service in a second (it
//! prints `registered greeter` and serves until Ctrl-C, which unregisters it):
//!
//! ```text
//! cargo run --example name_service -- register 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' greeter
//! ```
//!
//! and clients in a third:
//!
//! ```text
//! cargo run --example name_service -- list 'captp://<vat-id>@127.0.0.1:<port>/<swiss>'
//! cargo run --example name_service -- lookup 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' greeter ada
//! ```
//!
//! `list` prints `greeter`; `lookup` looks the name up and calls `greet("ada")` on what
//! it found, pipelined (one round trip to the registry for both), and prints
//! `Hello, ada! (from greeter)`. Stop the greeter and `lookup` fails with
//! `not_found: greeter`.
//!
//! `greet` looks the name up once and then greets every name typed on its standard
//! input. With a greeter registered with `--listen`, it says `direct: calls go to
//! greeter's vat` once the handoff is done; stop the registry then, and the greetings
//! go on:
//!
//! ```text
//! cargo run --example name_service -- register 'captp://...' greeter --listen 127.0.0.1:0
//! cargo run --example name_service -- greet 'captp://...' greeter
//! ```
//!
//! Or all three in one process, over real TLS on 127.0.0.1:
//!
//! ```text
//! cargo run --example name_service -- demo
//! ```
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C. `register` exits 0 on Ctrl-C and 1 if the registry refuses
//! the name, or goes away while the greeter does not listen (with `--listen` it goes on
//! serving the clients it was handed to); `lookup`, `list` and `greet` exit 1 on any
//! failure.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use captp::{Broken, CallContext, Handoff, Interface, Ref, Vat};
use tokio::sync::oneshot;

/// A registry of named objects: serve it, use it, or run the demo.
#[derive(clap::Parser)]
#[command(name = "name_service", version)]
enum Cli {
    /// Run the registry and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Serve a greeter registered under NAME until Ctrl-C (which unregisters it).
    Register {
        /// The registry's sturdy ref (`captp://...`, printed by `name_service serve`), or @FILE.
        uri: String,
        /// The name (1 to 64 characters, no spaces or control characters).
        #[arg(value_parser = name_arg)]
        name: String,
        /// Listen here, so that clients the registry introduces connect directly.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Look NAME up once, then greet each name read from standard input.
    Greet {
        /// The registry's sturdy ref, or @FILE.
        uri: String,
        /// The name to look up.
        #[arg(value_parser = name_arg)]
        name: String,
    },
    /// Look NAME up and have it greet WHO.
    Lookup {
        /// The registry's sturdy ref, or @FILE.
        uri: String,
        /// The name to look up.
        #[arg(value_parser = name_arg)]
        name: String,
        /// Whom to greet.
        who: String,
    },
    /// List the registered names.
    List {
        /// The registry's sturdy ref, or @FILE.
        uri: String,
    },
    /// Run a registry, a greeter and clients in one process.
    Demo,
}

/// The longest name the registry accepts, in characters.
const MAX_NAME: usize = 64;
/// The most names the registry holds.
const MAX_SERVICES: usize = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => {
            server::serve(
                "name_service serve",
                RegistryServer::new(Services::default()),
            )
            .await
        }
        Cli::Register { uri, name, listen } => {
            register(&client::parse_uri(&uri), &name, listen.as_deref()).await
        }
        Cli::Greet { uri, name } => greet(&client::parse_uri(&uri), &name).await,
        Cli::Lookup { uri, name, who } => lookup(&client::parse_uri(&uri), &name, &who).await,
        Cli::List { uri } => list(&client::parse_uri(&uri)).await,
        Cli::Demo => demo().await,
    }
}

/// Whether `name` is one the registry accepts: 1 to 64 characters, none of them
/// space or control characters.
/// `check_name` for the command line.
fn name_arg(name: &str) -> Result<String, String> {
    check_name(name).map(|()| name.to_owned())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(format!("a name is 1 to {MAX_NAME} characters"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a name has no spaces or control characters".to_owned());
    }
    Ok(())
}

// ---- The interfaces ----

/// Services by name. Its sturdy ref is the authority to register and to look up.
///
/// This registry holds greeters, so that a lookup answers a `GreeterRef` the client can
/// call at once. One for services of any kind would take and answer plain `Ref`s, and
/// its clients would convert them (`GreeterRef::from(r)`) after the answer arrived.
#[captp::interface]
trait Registry {
    /// Registers `service` under `name`, and answers the registration: the only way to
    /// take the name back.
    fn register(&self, name: String, service: GreeterRef) -> impl Registration;
    /// The service registered under `name`: usable at once, pipelined.
    fn lookup(&self, name: String) -> impl Greeter;
    /// The names registered, in order.
    fn names(&self) -> Vec<String>;
}

/// The authority to take one name back: only the service that registered holds it.
#[captp::interface]
trait Registration {
    /// Unregisters the name (if it is still this registration's).
    fn cancel(&self);
}

/// The service `register` offers.
#[captp::interface]
trait Greeter {
    /// A greeting for `who`.
    fn greet(&self, context: CallContext, who: &str) -> String;
}

// ---- The registry ----

#[derive(Clone, Default)]
struct Services(Arc<Mutex<ByName>>);

#[derive(Default)]
struct ByName {
    next_id: u64,
    entries: BTreeMap<String, Entry>,
}

struct Entry {
    service: GreeterRef,
    /// Which registration this is, so a stale `cancel` cannot remove a newer one.
    id: u64,
    /// Dropping this (when the entry goes) stops the task watching the service.
    _watching: oneshot::Sender<()>,
}

impl Services {
    fn lock(&self) -> MutexGuard<'_, ByName> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes `name` if it is still registration `id`.
    fn forget(&self, name: &str, id: u64, why: &str) {
        let mut services = self.lock();
        if services.entries.get(name).is_some_and(|e| e.id == id) {
            services.entries.remove(name);
            eprintln!("name_service serve: forgot {name} ({why})");
        }
    }
}

impl Registry for Services {
    fn register(&self, name: String, service: GreeterRef) -> RegistrationRef {
        // A method that answers an interface refuses by answering a broken reference.
        let refuse = |b: Broken| RegistrationRef::from(Ref::broken(b));
        if let Err(problem) = check_name(&name) {
            return refuse(Broken::bad_arguments(problem));
        }
        let mut services = self.lock();
        if services.entries.contains_key(&name) {
            return refuse(Broken::failed(format!("name_taken: {name}")));
        }
        if services.entries.len() >= MAX_SERVICES {
            return refuse(Broken::failed(format!(
                "registry_full: the registry holds at most {MAX_SERVICES} names"
            )));
        }
        let id = services.next_id;
        services.next_id += 1;
        let (watching, stop) = oneshot::channel();
        services.entries.insert(
            name.clone(),
            Entry {
                service: service.clone(),
                id,
                _watching: watching,
            },
        );
        drop(services);
        eprintln!("name_service serve: registered {name}");

        // A service whose reference breaks (its vat went away) is forgotten.
        let registry = self.clone();
        let watched = name.clone();
        tokio::spawn(async move {
            tokio::select! {
                broken = service.as_ref().when_broken() => {
                    registry.forget(&watched, id, &format!("its reference broke: {broken}"));
                }
                _ = stop => {}
            }
        });
        RegistrationRef::serve(Registered {
            registry: self.clone(),
            name,
            id,
        })
    }

    fn lookup(&self, name: String) -> GreeterRef {
        match self.lock().entries.get(&name) {
            Some(entry) => entry.service.clone(),
            None => GreeterRef::from(Ref::broken(Broken::failed(format!("not_found: {name}")))),
        }
    }

    fn names(&self) -> Vec<String> {
        self.lock().entries.keys().cloned().collect()
    }
}

/// One registration, as `register` answers it.
struct Registered {
    registry: Services,
    name: String,
    id: u64,
}

impl Registration for Registered {
    fn cancel(&self) {
        self.registry.forget(&self.name, self.id, "cancelled");
    }
}

// ---- A service ----

/// The greeter a `register` process offers, under its name.
struct Hello {
    name: String,
}

impl Greeter for Hello {
    fn greet(&self, context: CallContext, who: &str) -> String {
        // Which vat delivered the call: the client's own once it was handed off, the
        // registry's while the registry forwards.
        let from = context
            .caller()
            .map_or_else(|| "this vat".to_owned(), |id| id.to_string());
        eprintln!("name_service register: greet({who:?}) from {from}");
        format!("Hello, {who}! (from {})", self.name)
    }
}

/// `register <URI> <name> [--listen ADDR]`: registers a greeter and serves it until
/// Ctrl-C (which unregisters it) or until the registry goes away.
async fn register(
    sturdy: &captp::SturdyRef,
    name: &str,
    listen: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Vat::builder();
    if let Some(addr) = listen {
        builder = builder.listen(addr);
    }
    let vat = builder.start().await?;
    let registry = RegistryRef::from(vat.enliven(sturdy));
    let greeter = GreeterRef::serve(Hello {
        name: name.to_owned(),
    });
    let registration = registry.register(name.to_owned(), greeter);
    // Wait for the answer before saying so: the registration is pipelined, and would
    // break only later if the registry refused the name.
    if let Err(broken) = registration.as_ref().when_settled::<Ref>().await {
        vat.shutdown().await;
        client::fail(&broken);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "registered {name}")?;
    stdout.flush()?;
    drop(stdout);
    eprintln!("name_service register: serving {name} until Ctrl-C");

    tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            signal?;
            let cancelled = registration.cancel().await;
            vat.shutdown().await;
            match cancelled {
                Ok(()) => {
                    eprintln!("name_service register: unregistered {name}");
                    Ok(())
                }
                Err(broken) => client::fail(&broken),
            }
        }
        broken = registry.as_ref().when_broken(), if listen.is_none() => {
            vat.shutdown().await;
            client::fail(&broken);
        }
    }
}

/// Looks `name` up and calls `greet(who)` on it: pipelined, so the lookup and the
/// call leave together.
async fn lookup_and_greet(registry: &RegistryRef, name: &str, who: &str) -> Result<String, Broken> {
    registry.lookup(name.to_owned()).greet(who).await
}

/// `lookup <URI> <name> <who>`.
async fn lookup(
    sturdy: &captp::SturdyRef,
    name: &str,
    who: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let vat = Vat::builder().start().await?;
    let registry = RegistryRef::from(vat.enliven(sturdy));
    let greeting = lookup_and_greet(&registry, name, who).await;
    vat.shutdown().await;
    match greeting {
        Ok(greeting) => {
            println!("{greeting}");
            Ok(())
        }
        Err(broken) => client::fail(&broken),
    }
}

/// `greet <URI> <name>`: looks `name` up once, says which path its calls take, and
/// greets every line of standard input with it, one line of output each.
async fn greet(sturdy: &captp::SturdyRef, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let vat = Vat::builder().start().await?;
    println!("client vat {}", vat.vat_id());
    let registry = RegistryRef::from(vat.enliven(sturdy));
    // Awaiting the reference (rather than pipelining on it) is what hands it off: the
    // client then holds the service's own reference, not a promise at the registry.
    let found = registry
        .lookup(name.to_owned())
        .as_ref()
        .when_settled::<Ref>()
        .await;
    let service = match found {
        Ok(service) => service,
        Err(broken) => {
            vat.shutdown().await;
            client::fail(&broken);
        }
    };
    match service.when_handed_off().await {
        Handoff::Direct => println!("direct: calls go to {name}'s vat"),
        Handoff::ThroughIntroducer { reason } => {
            println!("proxied: calls go through the registry ({reason})");
        }
        _ => println!("proxied: calls go through the registry"),
    }
    let greeter = GreeterRef::from(service);
    // Standard input is read on a thread of its own; end of input closes the channel.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(who) = lines.recv().await {
        match greeter.greet(&who).await {
            Ok(greeting) => println!("{greeting}"),
            Err(broken) => {
                vat.shutdown().await;
                client::fail(&broken);
            }
        }
    }
    vat.shutdown().await;
    Ok(())
}

/// `list <URI>`: the registered names, one per line.
async fn list(sturdy: &captp::SturdyRef) -> Result<(), Box<dyn std::error::Error>> {
    let vat = Vat::builder().start().await?;
    let names = RegistryRef::from(vat.enliven(sturdy)).names().await;
    vat.shutdown().await;
    match names {
        Ok(names) => {
            for name in names {
                println!("{name}");
            }
            Ok(())
        }
        Err(broken) => client::fail(&broken),
    }
}

/// The registry, a greeter service and a client, each a vat of its own, in one
/// process over real TLS on 127.0.0.1.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let registry_vat = Vat::builder().listen("127.0.0.1:0").start().await?;
    let uri = registry_vat.export(RegistryServer::new(Services::default()))?;
    println!(
        "registry vat {} exports the registry at",
        registry_vat.vat_id()
    );
    println!("  {uri}");

    let service_vat = Vat::builder().start().await?;
    let greeter = GreeterRef::serve(Hello {
        name: "greeter".to_owned(),
    });
    let registration =
        RegistryRef::from(service_vat.enliven(&uri)).register("greeter".to_owned(), greeter);
    // The registration is pipelined; wait for it before another vat looks the name up.
    registration.as_ref().when_settled::<Ref>().await?;
    println!("service vat {} registered greeter", service_vat.vat_id());

    let client_vat = Vat::builder().start().await?;
    let registry = RegistryRef::from(client_vat.enliven(&uri));
    let names = registry.names().await?;
    println!(
        "client vat {} sees: {}",
        client_vat.vat_id(),
        names.join(", ")
    );
    println!("{}", lookup_and_greet(&registry, "greeter", "ada").await?);

    registration.cancel().await?;
    let gone = lookup_and_greet(&registry, "greeter", "ada").await;
    match gone {
        Err(broken) => println!("after cancel: {broken}"),
        Ok(greeting) => return Err(format!("still registered: {greeting}").into()),
    }

    for vat in [client_vat, service_vat, registry_vat] {
        vat.shutdown().await;
    }
    Ok(())
}
