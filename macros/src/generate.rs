//! Writing the code for an interface: the trait as the server implements it, the client
//! stub `FooRef`, the server adapter `FooServer<T>`, and compile-time checks spanned at
//! the user's types. It reads only what `parse` produced and the trait itself.

use proc_macro2::{Span, TokenStream as Tokens};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemTrait, Type};

use crate::parse::*;

pub(crate) fn generate(item: &ItemTrait, methods: &[Method]) -> Tokens {
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
