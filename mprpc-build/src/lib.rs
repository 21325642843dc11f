//! Code generation for mprpc, used from `build.rs`.
//!
//! Compiles `.proto` files with protox (no system `protoc`), generates the messages with
//! prost-build, and for every `service` generates:
//!
//! - a server trait (`Echo`) with one `async fn` per rpc, taking a [`Context`] and the
//!   request and returning the response or a `Status`;
//! - a router (`EchoServer<T>`) that turns an implementation into an `mprpc::Service` to
//!   pass to `Server::builder().add_service(..)`;
//! - a typed client (`EchoClient`) with one async method per rpc, plus a `*_with` variant
//!   taking `CallOptions` (timeout, deadline, metadata).
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mprpc_build::compile_protos(&["proto/echo.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! ```text
//! // src/lib.rs: the output lands in OUT_DIR, one file per proto package.
//! pub mod echo {
//!     include!(concat!(env!("OUT_DIR"), "/example.rs"));
//! }
//! ```
//!
//! The `examples` crate of the mprpc workspace has a doctest that runs generated code.
//! Streaming rpcs are not supported; a service that declares one fails to compile with a
//! message naming the method.
//!
//! [`Context`]: https://docs.rs/mprpc/latest/mprpc/struct.Context.html
//!
//! # Layout
//! - [`compile_protos`] and [`Builder`]: the build-script entry points;
//! - [`Generator`]: the prost-build `ServiceGenerator` that writes the mprpc code.

#![warn(missing_docs)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why code generation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A `.proto` file does not parse or does not type-check.
    Compile(Box<protox::Error>),
    /// prost-build could not write the generated code.
    Generate(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Compile(err) => write!(f, "cannot compile .proto files: {err}"),
            Error::Generate(err) => write!(f, "cannot generate code: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Compile(err) => Some(err.as_ref()),
            Error::Generate(err) => Some(err),
        }
    }
}

/// Generates messages and mprpc services for `protos`, looking up imports in `includes`,
/// into `OUT_DIR`; emits `cargo:rerun-if-changed` for every input.
///
/// # Errors
/// [`Error::Compile`] for invalid `.proto` input, [`Error::Generate`] when writing fails.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    Builder::new().compile(protos, includes)
}

/// Code generation with a caller-supplied prost-build configuration.
#[derive(Debug, Default)]
pub struct Builder {
    config: prost_build::Config,
}

impl Builder {
    /// A builder with prost-build's defaults.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The prost-build configuration, e.g. to add derives or use `bytes::Bytes` fields.
    pub fn prost_config(&mut self) -> &mut prost_build::Config {
        &mut self.config
    }

    /// Generates messages and services; see [`compile_protos`].
    ///
    /// # Errors
    /// As [`compile_protos`].
    pub fn compile(
        mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let protos: Vec<PathBuf> = protos.iter().map(|p| p.as_ref().to_path_buf()).collect();
        let includes: Vec<PathBuf> = includes.iter().map(|p| p.as_ref().to_path_buf()).collect();
        for path in protos.iter().chain(&includes) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        let fds = protox::compile(&protos, &includes).map_err(|e| Error::Compile(Box::new(e)))?;
        self.config
            .service_generator(Box::new(Generator))
            .compile_fds(fds)
            .map_err(Error::Generate)
    }
}

/// The prost-build service generator that writes mprpc server traits, routers and clients.
#[derive(Debug, Default, Clone, Copy)]
pub struct Generator;

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let streaming: Vec<&str> = service
            .methods
            .iter()
            .filter(|m| m.client_streaming || m.server_streaming)
            .map(|m| m.proto_name.as_str())
            .collect();
        if !streaming.is_empty() {
            let _ = writeln!(
                buf,
                "compile_error!(\"mprpc supports unary rpcs only; {}.{} streams: {}\");",
                service.package,
                service.proto_name,
                streaming.join(", ")
            );
            return;
        }
        write_trait(&service, buf);
        write_router(&service, buf);
        write_client(&service, buf);
    }
}

fn full_name(service: &prost_build::Service) -> String {
    if service.package.is_empty() {
        service.proto_name.clone()
    } else {
        format!("{}.{}", service.package, service.proto_name)
    }
}

fn write_docs(comments: &prost_build::Comments, indent: &str, buf: &mut String) {
    for line in comments.leading.iter().flat_map(|c| c.lines()) {
        let _ = writeln!(buf, "{indent}///{}", line.replace('\t', "    ").trim_end());
    }
}

fn write_trait(service: &prost_build::Service, buf: &mut String) {
    let name = &service.name;
    write_docs(&service.comments, "", buf);
    if service.comments.leading.is_empty() {
        let _ = writeln!(
            buf,
            "/// Server side of `{}`: implement one method per rpc.",
            full_name(service)
        );
    }
    let _ = writeln!(
        buf,
        "pub trait {name}: ::core::marker::Send + ::core::marker::Sync + 'static {{"
    );
    for m in &service.methods {
        write_docs(&m.comments, "    ", buf);
        if m.comments.leading.is_empty() {
            let _ = writeln!(buf, "    /// Handles `{}`.", m.proto_name);
        }
        let _ = writeln!(
            buf,
            "    fn {}(&self, ctx: ::mprpc::Context, request: {}) -> impl ::core::future::Future<Output = ::core::result::Result<{}, ::mprpc::Status>> + ::core::marker::Send;",
            m.name, m.input_type, m.output_type
        );
    }
    buf.push_str("}\n");
}

fn write_router(service: &prost_build::Service, buf: &mut String) {
    let name = &service.name;
    let full = full_name(service);
    let method_list: Vec<String> = service
        .methods
        .iter()
        .map(|m| format!("{:?}", m.proto_name))
        .collect();
    let method_list = method_list.join(", ");
    let _ = writeln!(
        buf,
        r#"/// Routes `{full}` calls to an implementation of [`{name}`]; add it to a server with
/// `mprpc::Server::builder().add_service({name}Server::new(..))`.
#[derive(Debug)]
pub struct {name}Server<T> {{
    inner: ::std::sync::Arc<T>,
}}

impl<T: {name}> {name}Server<T> {{
    /// The fully qualified service name.
    pub const NAME: &'static str = "{full}";

    /// Wraps an implementation.
    pub fn new(inner: T) -> Self {{
        Self {{ inner: ::std::sync::Arc::new(inner) }}
    }}

    /// Wraps an implementation that is shared with other code.
    pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {{
        Self {{ inner }}
    }}
}}

impl<T: {name}> ::mprpc::Service for {name}Server<T> {{
    fn name(&self) -> &'static str {{
        Self::NAME
    }}

    fn methods(&self) -> &'static [&'static str] {{
        &[{method_list}]
    }}

    fn call(
        &self,
        method: &str,
        ctx: ::mprpc::Context,
        request: ::mprpc::Bytes,
    ) -> ::core::option::Option<::mprpc::BoxFuture<::mprpc::service::CallResult>> {{
        let inner = ::std::sync::Arc::clone(&self.inner);
        match method {{"#
    );
    for m in &service.methods {
        let _ = writeln!(
            buf,
            r#"            "{proto}" => ::core::option::Option::Some(::std::boxed::Box::pin(async move {{
                let request = ::mprpc::service::decode_request::<{input}>(request)?;
                let response = inner.{rust}(ctx, request).await?;
                ::core::result::Result::Ok(::mprpc::service::encode_response(&response))
            }})),"#,
            proto = m.proto_name,
            input = m.input_type,
            rust = m.name,
        );
    }
    buf.push_str(
        "            _ => {\n                let _ = (inner, ctx, request);\n                ::core::option::Option::None\n            }\n        }\n    }\n}\n",
    );
}

fn write_client(service: &prost_build::Service, buf: &mut String) {
    let name = &service.name;
    let full = full_name(service);
    let _ = writeln!(
        buf,
        r#"/// Typed client for `{full}`. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct {name}Client {{
    client: ::mprpc::Client,
}}

impl {name}Client {{
    /// The fully qualified service name.
    pub const NAME: &'static str = "{full}";

    /// Calls `{full}` through `client`.
    pub fn new(client: ::mprpc::Client) -> Self {{
        Self {{ client }}
    }}

    /// The untyped client underneath.
    pub fn inner(&self) -> &::mprpc::Client {{
        &self.client
    }}
"#
    );
    for m in &service.methods {
        // NO_SIDE_EFFECTS (1) and IDEMPOTENT (2) both make a repeat harmless.
        let idempotent = m
            .options
            .idempotency_level
            .is_some_and(|level| level == 1 || level == 2);
        let _ = writeln!(
            buf,
            r#"    /// `{proto}` as sent on the wire.
    pub const {upper}: ::mprpc::Method = ::mprpc::Method {{ service: "{full}", name: "{proto}", idempotent: {idempotent} }};
"#,
            proto = m.proto_name,
            upper = m.name.to_uppercase(),
        );
        write_docs(&m.comments, "    ", buf);
        let _ = writeln!(
            buf,
            r#"    /// Calls `{proto}` with the client's default options.
    ///
    /// # Errors
    /// The server's status, or a transport failure; see `mprpc::Error`.
    pub async fn {rust}(&self, request: &{input}) -> ::core::result::Result<{output}, ::mprpc::Error> {{
        self.client.unary(&Self::{upper}, request, &::mprpc::CallOptions::default()).await
    }}

    /// Calls `{proto}` with per-call options (timeout, deadline, metadata).
    ///
    /// # Errors
    /// The server's status, or a transport failure; see `mprpc::Error`.
    pub async fn {rust}_with(&self, request: &{input}, options: &::mprpc::CallOptions) -> ::core::result::Result<{output}, ::mprpc::Error> {{
        self.client.unary(&Self::{upper}, request, options).await
    }}
"#,
            proto = m.proto_name,
            rust = m.name,
            upper = m.name.to_uppercase(),
            input = m.input_type,
            output = m.output_type,
        );
    }
    buf.push_str("}\n");
}
