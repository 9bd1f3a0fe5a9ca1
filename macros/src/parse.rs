//! Reading a trait: each method's parameters and what it returns, checked against what
//! an interface may declare, with errors placed at the user's code. It generates nothing
//! (that is `generate`) and never panics on any input.

use proc_macro2::TokenStream as Tokens;
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    Error, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, TraitItemFn, Type,
    TypeParamBound,
};

/// What a method gives back, as declared.
pub(crate) enum Returns {
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
pub(crate) struct Param {
    pub(crate) name: Ident,
    /// As declared (what the server method takes and the stub method takes).
    pub(crate) ty: Type,
    /// What the server decodes: `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`.
    pub(crate) owned: Type,
    /// Declared as a shared reference: the server passes `&decoded`.
    pub(crate) by_ref: bool,
    /// `Vec<u8>` or `&[u8]`: sent as a CBOR byte string.
    pub(crate) bytes: bool,
}

pub(crate) struct Method {
    pub(crate) attrs: Vec<syn::Attribute>,
    pub(crate) name: Ident,
    pub(crate) is_async: bool,
    pub(crate) oneway: bool,
    pub(crate) context: bool,
    pub(crate) params: Vec<Param>,
    pub(crate) returns: Returns,
    /// The declared return type (for the server trait).
    pub(crate) server_ret: Tokens,
}

pub(crate) fn method(f: &TraitItemFn) -> syn::Result<Method> {
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

pub(crate) fn returns(output: &ReturnType) -> syn::Result<(Returns, Tokens)> {
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
pub(crate) fn interface_path(it: &syn::TypeImplTrait) -> syn::Result<syn::Path> {
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
pub(crate) fn stub_path(path: &syn::Path) -> syn::Path {
    let mut stub = path.clone();
    if let Some(last) = stub.segments.last_mut() {
        last.ident = format_ident!("{}Ref", last.ident);
    }
    stub
}

/// `Result<T, E>`'s two arguments, if `ty` is one.
pub(crate) fn result_args(ty: &Type) -> syn::Result<Option<(Type, Type)>> {
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

pub(crate) fn last_ident_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == name),
        _ => false,
    }
}

pub(crate) fn is_call_context(ty: &Type) -> bool {
    last_ident_is(ty, "CallContext")
}

pub(crate) fn is_u8(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8"))
}

pub(crate) fn is_vec_u8(ty: &Type) -> bool {
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

pub(crate) fn is_slice_u8(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => matches!(&*r.elem, Type::Slice(s) if is_u8(&s.elem)),
        _ => false,
    }
}

/// The owned type decoded for a `&elem` parameter.
pub(crate) fn owned_of(elem: &Type) -> Type {
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
pub(crate) fn check_no_lifetimes_or_impl(ty: &Type) -> syn::Result<()> {
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
pub(crate) fn type_text(tokens: &Tokens) -> String {
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
