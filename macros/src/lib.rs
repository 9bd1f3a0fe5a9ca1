//! `#[captp::interface]`: turns a trait into a typed captp interface. Use it through
//! the `captp` crate (`captp::interface`), whose documentation is the guide; this crate
//! only generates code against `captp`'s public API and its hidden `__private` module.
//!
//! For `trait Car` it emits the trait (async methods desugared to `-> impl Future +
//! Send`), the client stub `CarRef`, the server adapter `CarServer<T>`, and compile-time
//! checks placed at the user's types, so that a mistake is reported where it was made.
//! It reads nothing but the trait and runs no code of the user's.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use syn::spanned::Spanned;
use syn::{Error, ItemTrait, TraitItem, parse_macro_input};

/// Generates a typed client stub and a server adapter from a trait. See the `captp`
/// crate's documentation of `interface` for the rules and an example.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = Tokens::from(attr);
    if !attr.is_empty() {
        return Error::new(
            attr.span(),
            "#[captp::interface] takes no arguments: write `#[captp::interface]`",
        )
        .to_compile_error()
        .into();
    }
    let item = parse_macro_input!(item as ItemTrait);
    match expand(item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

mod generate;
mod parse;

use generate::generate;
use parse::method;

fn expand(item: ItemTrait) -> syn::Result<Tokens> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(Error::new(
            item.generics.span(),
            "an interface cannot be generic: a peer calls it by method name, so every \
             type must be concrete; remove the type parameters",
        ));
    }
    if let Some(unsafety) = item.unsafety {
        return Err(Error::new(
            unsafety.span(),
            "an interface cannot be an unsafe trait",
        ));
    }
    if !item.supertraits.is_empty() {
        return Err(Error::new(
            item.supertraits.span(),
            "an interface cannot have supertraits: it gets `Send + Sync + 'static`; put \
             shared methods in a separate interface",
        ));
    }
    let mut methods = Vec::new();
    let mut errors: Option<Error> = None;
    for trait_item in &item.items {
        let result = match trait_item {
            TraitItem::Fn(f) => method(f),
            other => Err(Error::new(
                other.span(),
                "an interface holds only methods (`fn name(&self, ..)`): move constants and \
                 types out of the trait",
            )),
        };
        match result {
            Ok(m) => methods.push(m),
            Err(e) => match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            },
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    Ok(generate(&item, &methods))
}
