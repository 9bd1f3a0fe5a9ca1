//! `#[captp::interface]`: turns a trait into a typed captp interface. Use it through
//! the `captp` crate (`captp::interface`), whose documentation is the guide; this crate
//! only generates code against `captp`'s public API and its hidden `__private` module.
//!
//! For `trait Car` it emits the trait (async methods desugared to `-> impl Future +
//! Send`), the client stub `CarRef`, the server adapter `CarServer<T>`, and compile-time
//! checks placed at the user's types, so that a mistake is reported where it was made.
//! It reads nothing but the trait and runs no code of the user's.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Error, FnArg, GenericArgument, Ident, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type, TypeParamBound, parse_macro_input,
};

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

/// What a method gives back, as declared.
enum Returns {
    /// Nothing (`()`).
    Unit,
    /// Plain data `T`: the caller gets `Promise<T>`.
    Data(Type),
    /// `Result<T, Broken>`: the caller gets `Promise<T>`.
    ResultBroken(Type),
    /// `Result<T, E>`: the caller gets `ResultPromise<T, E>`.
    ResultApp(Type, Box<Type>),
    /// `impl Foo`: the caller gets `FooRef` at once (pipelined); the server returns a
    /// `FooRef`. Holds the interface's path and its stub's path.
    Interface(syn::Path, syn::Path),
}

/// One parameter the caller passes.
struct Param {
    name: Ident,
    /// As declared (what the server method takes and the stub method takes).
    ty: Type,
    /// What the server decodes: `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`.
    owned: Type,
    /// Declared as a shared reference: the server passes `&decoded`.
    by_ref: bool,
    /// `Vec<u8>` or `&[u8]`: sent as a CBOR byte string.
    bytes: bool,
}

struct Method {
    attrs: Vec<syn::Attribute>,
    name: Ident,
    is_async: bool,
    oneway: bool,
    context: bool,
    params: Vec<Param>,
    returns: Returns,
    /// The declared return type (for the server trait).
    server_ret: Tokens,
}

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

fn method(f: &TraitItemFn) -> syn::Result<Method> {
    let sig = &f.sig;
    if let Some(body) = &f.default {
        return Err(Error::new(
            body.span(),
            "an interface method cannot have a default body: declare it with `;` and write \
             the body in each `impl`",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(Error::new(
            c.span(),
            "an interface method cannot be `const`",
        ));
    }
    if let Some(u) = &sig.unsafety {
        return Err(Error::new(
            u.span(),
            "an interface method cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(Error::new(
            abi.span(),
            "an interface method cannot have an `extern` ABI",
        ));
    }
    if let Some(lt) = sig.generics.lifetimes().next() {
        return Err(Error::new(
            lt.span(),
            "interface methods cannot name lifetimes: arguments are decoded into owned \
             values at the callee; remove the lifetime and use an owned type (`String`, \
             `Vec<T>`) or a plain `&T`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "an interface method cannot be generic: a peer calls it by name with CBOR \
             data, so each parameter needs one concrete type; replace the type \
             parameters with concrete types (or an enum of the cases)",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(Error::new(
            v.span(),
            "an interface method cannot be variadic",
        ));
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) => {
            if r.reference.is_none() || r.colon_token.is_some() {
                return Err(Error::new(
                    r.span(),
                    "an interface method takes `&self`: the object is shared by every \
                     caller; write `&self`",
                ));
            }
            if r.mutability.is_some() {
                return Err(Error::new(
                    r.span(),
                    "an interface method takes `&self`, not `&mut self`: calls from \
                     several callers may run at once; keep mutable state behind a `Mutex` \
                     or an atomic and write `&self`",
                ));
            }
            if let Some((_, Some(lt))) = &r.reference {
                return Err(Error::new(
                    lt.span(),
                    "write `&self` without a lifetime: interface methods cannot name \
                     lifetimes",
                ));
            }
        }
        _ => {
            return Err(Error::new(
                sig.ident.span(),
                format!(
                    "an interface method needs `&self` as its first parameter: write \
                     `fn {}(&self, ..)` (associated functions cannot be called remotely)",
                    sig.ident
                ),
            ));
        }
    }

    let mut params = Vec::new();
    let mut context = false;
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(pt) = input else {
            return Err(Error::new(input.span(), "`self` may appear only first"));
        };
        let Pat::Ident(pat) = &*pt.pat else {
            return Err(Error::new(
                pt.pat.span(),
                "give this parameter a plain name (`name: Type`): patterns are not \
                 supported in interface methods",
            ));
        };
        if pat.by_ref.is_some() || pat.subpat.is_some() {
            return Err(Error::new(
                pat.span(),
                "give this parameter a plain name (`name: Type`)",
            ));
        }
        if is_call_context(&pt.ty) {
            if i != 0 {
                return Err(Error::new(
                    pt.ty.span(),
                    "a `CallContext` parameter must come first, right after `&self`",
                ));
            }
            context = true;
            continue;
        }
        check_no_lifetimes_or_impl(&pt.ty)?;
        let (owned, by_ref) = match &*pt.ty {
            Type::Reference(r) => {
                if r.mutability.is_some() {
                    return Err(Error::new(
                        r.span(),
                        "a parameter cannot be `&mut`: arguments are copied to the callee, \
                         so changes would not reach the caller; take the value (or `&T`) \
                         and return what changed",
                    ));
                }
                (owned_of(&r.elem), true)
            }
            ty => (ty.clone(), false),
        };
        let bytes = is_vec_u8(&pt.ty) || is_slice_u8(&pt.ty);
        params.push(Param {
            name: pat.ident.clone(),
            ty: (*pt.ty).clone(),
            owned,
            by_ref,
            bytes,
        });
    }

    let mut oneway = false;
    let mut attrs = Vec::new();
    for attr in &f.attrs {
        if attr.path().is_ident("oneway") {
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                return Err(Error::new(attr.span(), "`#[oneway]` takes no arguments"));
            }
            oneway = true;
        } else {
            attrs.push(attr.clone());
        }
    }

    if sig.ident == "serve" {
        return Err(Error::new(
            sig.ident.span(),
            "`serve` is taken: the stub's `serve` makes a reference to a local object; \
             rename this method",
        ));
    }
    let (returns, server_ret) = returns(&sig.output)?;
    if oneway && !matches!(returns, Returns::Unit) {
        return Err(Error::new(
            sig.output.span(),
            "a `#[oneway]` method has no answer, so it cannot return anything: remove the \
             return type, or remove `#[oneway]` to get a promise",
        ));
    }
    Ok(Method {
        attrs,
        name: sig.ident.clone(),
        is_async: sig.asyncness.is_some(),
        oneway,
        context,
        params,
        returns,
        server_ret,
    })
}

fn returns(output: &ReturnType) -> syn::Result<(Returns, Tokens)> {
    let ty = match output {
        ReturnType::Default => return Ok((Returns::Unit, quote!(()))),
        ReturnType::Type(_, ty) => &**ty,
    };
    if let Type::Tuple(t) = ty {
        if t.elems.is_empty() {
            return Ok((Returns::Unit, quote!(())));
        }
    }
    if let Type::ImplTrait(it) = ty {
        let path = interface_path(it)?;
        let stub = stub_path(&path);
        return Ok((Returns::Interface(path, stub.clone()), quote!(#stub)));
    }
    if let Some((ok, err)) = result_args(ty)? {
        check_no_lifetimes_or_impl(&ok)?;
        check_no_lifetimes_or_impl(&err)?;
        let server = ty.to_token_stream();
        return Ok(if last_ident_is(&err, "Broken") {
            (Returns::ResultBroken(ok), server)
        } else {
            (Returns::ResultApp(ok, Box::new(err)), server)
        });
    }
    check_no_lifetimes_or_impl(ty)?;
    if let Type::Reference(r) = ty {
        return Err(Error::new(
            r.span(),
            "a result cannot be a reference: it is copied to the caller; return an owned \
             value (`String` for `&str`, `Vec<T>` for `&[T]`)",
        ));
    }
    Ok((Returns::Data(ty.clone()), ty.to_token_stream()))
}

/// The interface named by `impl Foo` (exactly one trait, no lifetimes).
fn interface_path(it: &syn::TypeImplTrait) -> syn::Result<syn::Path> {
    let mut traits = it.bounds.iter().filter_map(|b| match b {
        TypeParamBound::Trait(t) => Some(t),
        _ => None,
    });
    match (traits.next(), traits.next(), it.bounds.len()) {
        (Some(t), None, 1) if t.lifetimes.is_none() => Ok(t.path.clone()),
        _ => Err(Error::new(
            it.span(),
            "write `impl Foo` with exactly one interface (a trait marked \
             #[captp::interface]) to return a reference to such an object",
        )),
    }
}

/// `a::Foo` -> `a::FooRef`.
fn stub_path(path: &syn::Path) -> syn::Path {
    let mut stub = path.clone();
    if let Some(last) = stub.segments.last_mut() {
        last.ident = format_ident!("{}Ref", last.ident);
    }
    stub
}

/// `Result<T, E>`'s two arguments, if `ty` is one.
fn result_args(ty: &Type) -> syn::Result<Option<(Type, Type)>> {
    let Type::Path(p) = ty else { return Ok(None) };
    let Some(last) = p.path.segments.last() else {
        return Ok(None);
    };
    if last.ident != "Result" {
        return Ok(None);
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Ok(None);
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    match types[..] {
        [ok, err] => {
            if let Type::ImplTrait(it) = ok {
                return Err(Error::new(
                    it.span(),
                    "a method that returns an interface cannot return a `Result`: return \
                     `impl Foo` and, to fail, a broken reference \
                     (`FooRef::from(captp::Ref::broken(..))`); callers see it break",
                ));
            }
            Ok(Some((ok.clone(), err.clone())))
        }
        _ => Err(Error::new(
            last.span(),
            "write the error type out: `Result<T, E>` (a `Result` alias with one argument \
             hides the error type the caller decodes)",
        )),
    }
}

fn last_ident_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == name),
        _ => false,
    }
}

fn is_call_context(ty: &Type) -> bool {
    last_ident_is(ty, "CallContext")
}

fn is_u8(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8"))
}

fn is_vec_u8(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    if last.ident != "Vec" {
        return false;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(a) => {
            a.args.len() == 1
                && matches!(a.args.first(), Some(GenericArgument::Type(t)) if is_u8(t))
        }
        _ => false,
    }
}

fn is_slice_u8(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => matches!(&*r.elem, Type::Slice(s) if is_u8(&s.elem)),
        _ => false,
    }
}

/// The owned type decoded for a `&elem` parameter.
fn owned_of(elem: &Type) -> Type {
    match elem {
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => {
            syn::parse_quote_spanned!(elem.span()=> ::std::string::String)
        }
        Type::Slice(s) => {
            let inner = &s.elem;
            syn::parse_quote_spanned!(elem.span()=> ::std::vec::Vec<#inner>)
        }
        other => other.clone(),
    }
}

/// Refuses named lifetimes and `impl Trait` anywhere inside `ty`.
fn check_no_lifetimes_or_impl(ty: &Type) -> syn::Result<()> {
    struct Check(Option<Error>);
    impl<'ast> syn::visit::Visit<'ast> for Check {
        fn visit_lifetime(&mut self, lt: &'ast syn::Lifetime) {
            if self.0.is_none() {
                self.0 = Some(Error::new(
                    lt.span(),
                    "interface methods cannot name lifetimes: arguments are decoded into \
                     owned values at the callee; use an owned type (`String`, `Vec<T>`) or a \
                     plain `&T`",
                ));
            }
        }
        fn visit_type_impl_trait(&mut self, it: &'ast syn::TypeImplTrait) {
            if self.0.is_none() {
                self.0 = Some(Error::new(
                    it.span(),
                    "`impl Trait` is allowed only as a whole return type (`-> impl Foo`, a \
                     reference to an interface); for a parameter or a field, use the \
                     interface's stub type (`FooRef`)",
                ));
            }
        }
    }
    let mut check = Check(None);
    syn::visit::visit_type(&mut check, ty);
    match check.0 {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A type as people write it, for introspection: `Vec<u8>`, `&str`, `Option<String>`.
fn type_text(tokens: &Tokens) -> String {
    let mut s = tokens.to_string();
    for (from, to) in [
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" ,", ","),
        (" :: ", "::"),
        (":: ", "::"),
        ("& ", "&"),
        ("[ ", "["),
        (" ]", "]"),
        ("( ", "("),
        (" )", ")"),
    ] {
        s = s.replace(from, to);
    }
    s
}

fn generate(item: &ItemTrait, methods: &[Method]) -> Tokens {
    let vis = &item.vis;
    let name = &item.ident;
    let attrs = &item.attrs;
    let name_str = name.to_string();
    let stub = format_ident!("{}Ref", name);
    let server = format_ident!("{}Server", name);
    let krate = quote!(::captp);
    let private = quote!(#krate::__private);

    // The trait, as implementors see it.
    let trait_methods = methods.iter().map(|m| {
        let attrs = &m.attrs;
        let mname = &m.name;
        let ctx = m.context.then(|| quote!(context: #krate::CallContext,));
        let params = m.params.iter().map(|p| {
            let (n, t) = (&p.name, &p.ty);
            quote!(#n: #t)
        });
        let ret = &m.server_ret;
        if m.is_async {
            quote! {
                #(#attrs)*
                fn #mname(&self, #ctx #(#params),*)
                    -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send;
            }
        } else {
            quote! {
                #(#attrs)*
                fn #mname(&self, #ctx #(#params),*) -> #ret;
            }
        }
    });

    // The stub's methods, as callers see them.
    let stub_methods = methods.iter().map(|m| {
        let attrs = &m.attrs;
        let mname = &m.name;
        let wire = mname.to_string();
        let params = m.params.iter().map(|p| {
            let (n, t) = (&p.name, &p.ty);
            quote!(#n: #t)
        });
        let parts: Vec<Tokens> = m
            .params
            .iter()
            .map(|p| {
                let n = &p.name;
                match (p.bytes, p.by_ref) {
                    (true, true) => quote!(#private::serde_bytes::Bytes::new(#n)),
                    (true, false) => quote!(#private::serde_bytes::Bytes::new(&#n)),
                    _ => quote!(#n),
                }
            })
            .collect();
        // Spanned at the method's name: a type that cannot travel is reported there
        // (and, by the checks below, at the type itself), not at the attribute.
        let sp = mname.span();
        let args = match parts.len() {
            0 => quote_spanned!(sp=> ()),
            _ => quote_spanned!(sp=> (#(#parts,)*)),
        };
        let (ret, body) = match &m.returns {
            _ if m.oneway => (
                quote!(()),
                quote_spanned!(sp=> #private::send_only(&self.0, #wire, #args)),
            ),
            Returns::Unit => (
                quote!(#krate::Promise<()>),
                quote_spanned!(sp=> self.0.send(#wire, #args)),
            ),
            Returns::Data(t) | Returns::ResultBroken(t) => (
                quote_spanned!(t.span()=> #krate::Promise<#t>),
                quote_spanned!(sp=> self.0.send(#wire, #args)),
            ),
            Returns::ResultApp(t, e) => (
                quote_spanned!(t.span()=> #krate::ResultPromise<#t, #e>),
                quote_spanned!(sp=> #krate::ResultPromise::new(self.0.send(#wire, #args))),
            ),
            Returns::Interface(_, s) => (
                quote!(#s),
                quote_spanned!(sp=> <#s as ::core::convert::From<#krate::Ref>>::from(self.0.send_ref(#wire, #args))),
            ),
        };
        quote! {
            #(#attrs)*
            #vis fn #mname(&self, #(#params),*) -> #ret {
                #body
            }
        }
    });

    // The server's dispatch arms.
    let arms = methods.iter().map(|m| {
        let mname = &m.name;
        let wire = mname.to_string();
        let names: Vec<Ident> = (0..m.params.len())
            .map(|i| format_ident!("__captp_a{}", i))
            .collect();
        let owned: Vec<Tokens> = m
            .params
            .iter()
            .map(|p| {
                let t = &p.owned;
                quote_spanned!(p.ty.span()=> #t)
            })
            .collect();
        let pass = m.params.iter().zip(&names).map(
            |(p, n)| {
                if p.by_ref { quote!(&#n) } else { quote!(#n) }
            },
        );
        let ctx = m.context.then(|| quote!(#krate::CallContext::of(&args),));
        let decode = quote_spanned! {mname.span()=>
            let (#(#names,)*): (#(#owned,)*) = match #private::decode(&args) {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(reply) => return reply,
            };
        };
        let wrap = |t: &Type, v: Tokens| {
            if is_vec_u8(t) {
                quote!(#private::serde_bytes::ByteBuf::from(#v))
            } else {
                v
            }
        };
        if m.is_async {
            let call = quote! {
                <__CaptpT as #name>::#mname(&*__captp_this, #ctx #(#pass),*).await
            };
            let reply = match &m.returns {
                Returns::Interface(..) => {
                    quote!(#private::later_interface(async move { #call }))
                }
                Returns::Unit => quote! {
                    #private::later(async move {
                        #call;
                        ::core::result::Result::Ok::<(), #krate::Broken>(())
                    })
                },
                Returns::Data(t) => {
                    let v = wrap(t, quote!(__captp_r));
                    quote! {
                        #private::later(async move {
                            let __captp_r = #call;
                            ::core::result::Result::Ok::<_, #krate::Broken>(#v)
                        })
                    }
                }
                Returns::ResultBroken(t) => {
                    let v = wrap(t, quote!(v));
                    quote! {
                        #private::later(async move { #call.map(|v| #v) })
                    }
                }
                Returns::ResultApp(t, _) => {
                    let v = wrap(t, quote!(v));
                    quote! {
                        #private::later(async move {
                            #call.map(|v| #v).map_err(|e| #private::app_error(&e))
                        })
                    }
                }
            };
            quote! {
                #wire => {
                    #decode
                    let __captp_this = ::std::sync::Arc::clone(&self.0);
                    #reply
                }
            }
        } else {
            let call = quote! {
                <__CaptpT as #name>::#mname(&*self.0, #ctx #(#pass),*)
            };
            let reply = match &m.returns {
                Returns::Interface(..) => quote!(#private::reply_interface(#call)),
                Returns::Unit => quote! {{
                    #call;
                    #krate::Reply::ok(())
                }},
                Returns::Data(t) => {
                    let v = wrap(t, call);
                    quote!(#krate::Reply::ok(#v))
                }
                Returns::ResultBroken(t) => {
                    let v = wrap(t, quote!(v));
                    quote! {
                        match #call {
                            ::core::result::Result::Ok(v) => #krate::Reply::ok(#v),
                            ::core::result::Result::Err(b) => #krate::Reply::err(b),
                        }
                    }
                }
                Returns::ResultApp(t, _) => {
                    let v = wrap(t, quote!(v));
                    quote! {
                        match #call {
                            ::core::result::Result::Ok(v) => #krate::Reply::ok(#v),
                            ::core::result::Result::Err(e) => {
                                #krate::Reply::err(#private::app_error(&e))
                            }
                        }
                    }
                }
            };
            quote! {
                #wire => {
                    #decode
                    #reply
                }
            }
        }
    });

    // Compile-time checks, each at the user's type.
    let checks = methods.iter().flat_map(|m| {
        let mut checks: Vec<Tokens> = m
            .params
            .iter()
            .map(|p| {
                let t = &p.owned;
                quote_spanned!(p.ty.span()=> #private::assert_data::<#t>();)
            })
            .collect();
        match &m.returns {
            Returns::Data(t) | Returns::ResultBroken(t) => {
                checks.push(quote_spanned!(t.span()=> #private::assert_data::<#t>();));
            }
            Returns::ResultApp(t, e) => {
                checks.push(quote_spanned!(t.span()=> #private::assert_data::<#t>();));
                checks.push(quote_spanned!(e.span()=> #private::assert_app_error::<#e>();));
            }
            Returns::Unit | Returns::Interface(..) => {}
        }
        checks
    });

    // Introspection.
    let infos = methods.iter().map(|m| {
        let wire = m.name.to_string();
        let params = m.params.iter().map(|p| {
            let n = p.name.to_string();
            let t = type_text(&p.ty.to_token_stream());
            quote!((#n, #t))
        });
        let (returns, interface) = match &m.returns {
            Returns::Interface(path, _) => (
                path.segments
                    .last()
                    .map(|s| s.ident.to_string())
                    .unwrap_or_default(),
                true,
            ),
            _ => (type_text(&m.server_ret), false),
        };
        let oneway = m.oneway;
        quote!(#private::method_info(#wire, &[#(#params),*], #returns, #interface, #oneway))
    });

    let doc_stub = format!(
        "A typed reference to an object serving [`{name_str}`]: its methods send calls \
         (methods returning data give a [`Promise`]({krate}::Promise), methods returning \
         an interface give its reference at once, pipelined). Generated by \
         `#[captp::interface]`; it travels in arguments and results like a \
         [`Ref`]({krate}::Ref).",
        krate = "captp"
    );
    let doc_serve = format!(
        "A reference to `server`, a local object serving [`{name_str}`]: to return from a \
         method, pass to a peer, or send to locally.\n\n# Authority\n\nWhoever receives \
         the reference can call `server`."
    );
    let doc_server = format!(
        "The [`Object`](captp::Object) that serves [`{name_str}`] with a `T`: it decodes \
         each call's arguments (exact arity and types, else `bad_arguments`), runs the \
         method, and answers `{DESCRIBE}` with the interface's description. Export it \
         with `Vat::export`. Generated by `#[captp::interface]`.",
        DESCRIBE = "captp.methods"
    );
    let doc_new = format!("Serves [`{name_str}`] with `server`.");
    let span = Span::call_site();
    let serde = quote!(#private::serde);

    quote_spanned! {span=>
        #(#attrs)*
        #vis trait #name: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #doc_stub]
        #[derive(::core::clone::Clone, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq)]
        #vis struct #stub(#krate::Ref);

        impl #stub {
            #(#stub_methods)*

            #[doc = #doc_serve]
            #vis fn serve(server: impl #name) -> #stub {
                #stub(#krate::Ref::from_object(#server::new(server)))
            }
        }

        impl #krate::Interface for #stub {
            const NAME: &'static str = #name_str;

            fn as_ref(&self) -> &#krate::Ref {
                &self.0
            }

            fn info() -> #krate::InterfaceInfo {
                #private::interface_info(#name_str, ::std::vec![#(#infos),*])
            }
        }

        impl ::core::convert::From<#krate::Ref> for #stub {
            fn from(r: #krate::Ref) -> #stub {
                #stub(r)
            }
        }

        impl ::core::convert::From<#stub> for #krate::Ref {
            fn from(s: #stub) -> #krate::Ref {
                s.0
            }
        }

        impl #serde::Serialize for #stub {
            fn serialize<S: #serde::Serializer>(&self, serializer: S)
                -> ::core::result::Result<S::Ok, S::Error>
            {
                #serde::Serialize::serialize(&self.0, serializer)
            }
        }

        impl<'de> #serde::Deserialize<'de> for #stub {
            fn deserialize<D: #serde::Deserializer<'de>>(deserializer: D)
                -> ::core::result::Result<#stub, D::Error>
            {
                <#krate::Ref as #serde::Deserialize<'de>>::deserialize(deserializer).map(#stub)
            }
        }

        #[doc = #doc_server]
        #vis struct #server<__CaptpT>(::std::sync::Arc<__CaptpT>);

        impl<__CaptpT: #name> #server<__CaptpT> {
            #[doc = #doc_new]
            #vis fn new(server: __CaptpT) -> #server<__CaptpT> {
                #server(::std::sync::Arc::new(server))
            }
        }

        impl<__CaptpT: #name> #krate::Object for #server<__CaptpT> {
            fn call(&self, method: &str, args: #krate::Args) -> #krate::Reply {
                match method {
                    #(#arms)*
                    #krate::DESCRIBE_METHOD => #krate::Reply::ok(
                        <#stub as #krate::Interface>::info()
                    ),
                    _ => #krate::Reply::unknown_method(method),
                }
            }
        }

        const _: () = {
            #[allow(dead_code)]
            fn __captp_checks() {
                #(#checks)*
            }
        };
    }
}
