//! One call from request to result, whatever carried it: routing, refusal before start,
//! interceptors, the deadline, panics and metrics. TCP connections and the in-process
//! transport both start calls here, so the two cannot drift apart.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tracing::{Level, Span, error, info_span};

use super::{Route, Shared};
use crate::frame::Text;
use crate::metrics::MethodMetrics;
use crate::service::{BoxFuture, CallResult, Context, Extensions};
use crate::status::{Code, Status};
use crate::tls::PeerIdentity;

/// The built-in health service: answered while draining, and not intercepted, so that
/// probers that carry no credentials still learn whether the server serves.
pub(crate) const HEALTH: &str = crate::health::HealthServer::<crate::health::Health>::NAME;

/// A request as any transport hands it over.
pub(crate) struct Incoming {
    pub(crate) request_id: u64,
    pub(crate) service: Text,
    pub(crate) method: Text,
    pub(crate) deadline: Option<Instant>,
    pub(crate) metadata: Vec<(Text, Text)>,
    pub(crate) peer: SocketAddr,
    /// The verified certificate of a TLS peer.
    pub(crate) peer_identity: Option<Arc<PeerIdentity>>,
    /// Carried by the in-process transport.
    pub(crate) local: bool,
    pub(crate) body: Bytes,
    /// When the request was read; latency is measured from here.
    pub(crate) received: Instant,
}

impl Incoming {
    /// The handler's view of the request, and its body.
    fn into_context(self) -> (Context, Bytes) {
        let ctx = Context {
            request_id: self.request_id,
            service: self.service,
            method: self.method,
            deadline: self.deadline,
            peer: self.peer,
            metadata: self.metadata,
            extensions: Extensions::default(),
            peer_identity: self.peer_identity,
            local: self.local,
        };
        (ctx, self.body)
    }
}

impl Shared {
    /// Starts a call, or answers why it was refused without running: unknown service or
    /// method, draining, deadline already spent, overload, or an interceptor's refusal.
    /// Refusals are counted in the metrics here; a started call counts itself when it ends.
    pub(crate) fn start(
        self: &Arc<Self>,
        incoming: Incoming,
        draining: bool,
    ) -> Result<Running, Status> {
        let received = incoming.received;
        // `as_str` checks UTF-8 each time: once per name and call.
        let Some(route) = self.routes.get(incoming.service.as_str()) else {
            let status = Status::unimplemented(format!("unknown service {}", incoming.service));
            self.unrouted.record(status.code(), received.elapsed());
            return Err(status);
        };
        let (declared, metrics) = route.lookup(incoming.method.as_str());
        self.admit(route, declared, metrics, incoming, draining)
            .inspect_err(|status| metrics.record(status.code(), received.elapsed()))
    }

    /// The steps of [`Shared::start`] once the call is routed, in order; the first that
    /// refuses the call ends it.
    fn admit(
        &self,
        route: &Route,
        declared: Option<&'static str>,
        metrics: &Arc<MethodMetrics>,
        incoming: Incoming,
        draining: bool,
    ) -> Result<Running, Status> {
        let health = route.health;
        self.accepting(draining, health)?;
        let (deadline, received) = (incoming.deadline, incoming.received);
        let (mut ctx, body) = incoming.into_context();
        let span = span(&ctx);
        if !health {
            self.intercept(&mut ctx)?;
        }
        self.in_time(deadline, received, health)?;
        let handler = dispatch(route, declared, ctx, body)?;
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "server overloaded: calls in flight",
            ));
        };
        Ok(Running {
            handler,
            deadline,
            timer: None,
            metrics: metrics.clone(),
            received,
            span,
            permit: Some(permit),
        })
    }

    /// Refuses new calls while the server drains (health checks excepted) and while too
    /// many response bytes wait to be written.
    fn accepting(&self, draining: bool, health: bool) -> Result<(), Status> {
        if draining && !health {
            return Err(Status::unavailable("server is shutting down"));
        }
        if self.queued.load(Ordering::Relaxed) > self.config.max_queued_bytes {
            return Err(Status::resource_exhausted(
                "server overloaded: responses queued",
            ));
        }
        Ok(())
    }

    /// Runs the interceptors in the order added; the first refusal refuses the call.
    fn intercept(&self, ctx: &mut Context) -> Result<(), Status> {
        for interceptor in self.interceptors.iter() {
            interceptor.intercept(ctx)?;
        }
        Ok(())
    }

    /// Refuses a call whose deadline passed before its handler could start.
    fn in_time(
        &self,
        deadline: Option<Instant>,
        received: Instant,
        health: bool,
    ) -> Result<(), Status> {
        // Checked after the interceptors, the last moment before the handler would start
        // (without interceptors that is when the request was read: no clock read needed).
        let now = if self.interceptors.is_empty() || health {
            received
        } else {
            Instant::now()
        };
        if deadline.is_some_and(|d| d <= now) {
            return Err(Status::deadline_exceeded(
                "deadline passed before the call started",
            ));
        }
        Ok(())
    }
}

/// The call's tracing span, built only when someone listens: a disabled span still costs a
/// few hundred instructions per call, a tenth of a call's whole cost.
fn span(ctx: &Context) -> Span {
    // `level_enabled!` is one atomic load; `enabled!` asks the subscriber.
    if !(tracing::level_enabled!(Level::INFO) && tracing::enabled!(Level::INFO)) {
        return Span::none();
    }
    let span = info_span!(
        "rpc",
        service = %ctx.service,
        method = %ctx.method,
        peer = %ctx.peer,
        id = ctx.request_id,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace) = ctx.trace_id() {
        span.record("trace_id", trace);
    }
    span
}

/// The handler future of the method the call names, or `UNIMPLEMENTED`.
fn dispatch(
    route: &Route,
    declared: Option<&'static str>,
    ctx: Context,
    body: Bytes,
) -> Result<BoxFuture<CallResult>, Status> {
    // The declared name is `'static` and checked already; only a method the service
    // does not list needs its name copied out of the context.
    let undeclared = declared.is_none().then(|| ctx.method.clone());
    let name = declared.unwrap_or_else(|| undeclared.as_ref().map_or("", |m| m.as_str()));
    route.service.call(name, ctx, body).ok_or_else(|| {
        Status::unimplemented(format!(
            "unknown method {name} on service {}",
            route.service.name()
        ))
    })
}

/// A started call. Resolves to what the caller is sent: the handler's result, `INTERNAL`
/// when it panicked, or `DEADLINE_EXCEEDED` when it did not finish before the deadline.
pub(crate) struct Running {
    handler: BoxFuture<CallResult>,
    deadline: Option<Instant>,
    /// Armed only once the handler waits, so calls that finish at once pay for no timer.
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<MethodMetrics>,
    received: Instant,
    span: Span,
    /// The call's place in the server-wide in-flight limit; `None` once finished.
    permit: Option<OwnedSemaphorePermit>,
}

impl Running {
    fn finish(&mut self, result: CallResult) -> Poll<CallResult> {
        let now = Instant::now();
        let result = match (&result, self.deadline) {
            // A result that comes after the deadline reaches no one waiting for it; the
            // caller is told what it already concluded.
            (Ok(_), Some(deadline)) if now >= deadline => Err(Status::deadline_exceeded(
                "the call finished after its deadline",
            )),
            _ => result,
        };
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .record(code, now.saturating_duration_since(self.received));
        self.permit = None;
        Poll::Ready(result)
    }
}

impl Future for Running {
    type Output = CallResult;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<CallResult> {
        let this = self.get_mut();
        let polled = {
            let _entered = this.span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| this.handler.as_mut().poll(cx)))
        };
        match polled {
            Ok(Poll::Ready(result)) => this.finish(result),
            Ok(Poll::Pending) => {
                let Some(deadline) = this.deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.finish(Err(Status::deadline_exceeded(
                        "deadline passed on the server",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Err(panic) => {
                let cause = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("non-string panic payload");
                this.span
                    .in_scope(|| error!(%cause, "handler panicked; answering INTERNAL"));
                this.finish(Err(Status::internal("the handler failed")))
            }
        }
    }
}
