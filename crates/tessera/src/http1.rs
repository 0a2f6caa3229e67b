//! A lean HTTP/1.1 client, and the in-place header reading it shares with the gateway's server.
//!
//! General-purpose clients build a header map, a URI and a body stream per request and drive
//! each connection from a task of its own. For the platform's own hot exchanges (the gateway's
//! upstream requests, a service's publishes and fetches on the control plane's log) that
//! machinery is most of what an exchange costs, so these are done here instead: plain
//! `http://` only, whole bodies, keep-alive connections driven on the caller's task.

pub mod fields;
pub mod pool;
