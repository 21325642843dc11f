//! [`Method`]: the name of one rpc, as generated clients, the client's interceptors and both
//! transports see it.

/// Names one rpc; generated clients hold one per method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// Fully qualified service name, e.g. `"example.Echo"`.
    pub service: &'static str,
    /// Method name as in the `.proto`, e.g. `"Echo"`.
    pub name: &'static str,
    /// Whether running it twice is harmless (`option idempotency_level = IDEMPOTENT`).
    pub idempotent: bool,
}

impl Method {
    /// A method that is not idempotent.
    pub const fn new(service: &'static str, name: &'static str) -> Method {
        Method {
            service,
            name,
            idempotent: false,
        }
    }
}
