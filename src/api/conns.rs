//! Connections per client address (`http.max_connections_per_ip`): counted when a connection
//! is accepted ([`Counter::accept`], from the server's `on_connect`) and released when it closes
//! (the [`Slot`] lives in the connection's data, dropped with it). A connection beyond the cap
//! is answered 429 `too_many_connections` on its first request and closed ([`refuse_over_cap`]),
//! so one address cannot take the whole `http.max_connections`. Behind a reverse proxy
//! (`http.trust_forwarded_for`) every connection comes from the proxy, so there is no per-address
//! cap then: the proxy's own limits apply.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use super::error::ApiError;

/// Open connections by client address.
#[derive(Default)]
pub struct Counter {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One accepted connection's place in the count; released when the connection's data drops.
pub struct Slot {
    counter: Arc<Counter>,
    ip: IpAddr,
    over: bool,
}

impl Counter {
    /// Counts a new connection from `ip`; the slot says whether it is over `cap`.
    pub fn accept(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Slot {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        *n += 1;
        Slot {
            counter: self.clone(),
            ip,
            over: *n as usize > cap,
        }
    }

    /// Open connections from `ip` (tests, metrics).
    pub fn open(&self, ip: &IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Middleware: a request on a connection over its address's cap gets 429
/// `too_many_connections` and `Connection: close`.
pub async fn refuse_over_cap(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.conn_data::<Slot>().is_some_and(|s| s.over) {
        let err = ApiError::new(
            trimtab_wire::Code::TooManyConnections,
            "too many connections from this address (http.max_connections_per_ip); close one or retry later",
        );
        let mut resp = actix_web::ResponseError::error_response(&err);
        resp.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}
