//! The `metrics:` listener: `GET /metrics` in the Prometheus text format
//! (0.0.4), `404` for anything else, one request per connection, on the
//! daemon's executor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_net::TcpStream;
use futures_lite::FutureExt;

use crate::config::metrics::Metrics;
use crate::metrics::{View, render};
use crate::proto::{auth, http};
use crate::shutdown::{Shutdown, Stage};
use crate::wire::{Gone, Wire, close_gracefully};

/// A scrape's request must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a scrape gets back.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers one request on `stream`; `view` gives what only the daemon
/// knows, asked for only when the figures are served. A scraper still
/// connected when the daemon drains is closed.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: &Metrics,
    view: impl FnOnce() -> View,
    stop: &Shutdown,
) {
    let mut wire = Wire::new(stream, Instant::now() + REQUEST_TIMEOUT);
    let head = async { Some(wire.next(http::parse_request, |_| Bad::Head).await) }
        .or(async {
            stop.until(Stage::Draining).await;
            None
        })
        .await;
    let mut out = Vec::new();
    let status = match head {
        // Gone, timed out or stopping: nothing to answer.
        None | Some(Err(Bad::Gone)) => 0,
        Some(Err(Bad::Head)) => {
            http::write_response(&mut out, 400, "Bad Request", &[], "bad request\n");
            400
        }
        Some(Ok(h)) => {
            let path = h.second.split('?').next().unwrap_or("");
            if h.first != "GET" || path != "/metrics" {
                http::write_response(&mut out, 404, "Not Found", &[], "not found: try /metrics\n");
                404
            } else if !allowed(cfg, h.one("Authorization")) {
                http::write_response(
                    &mut out,
                    401,
                    "Unauthorized",
                    &[("WWW-Authenticate", "Basic realm=\"websocks metrics\"")],
                    "authentication required\n",
                );
                401
            } else {
                let body = render(&view());
                http::write_response(
                    &mut out,
                    200,
                    "OK",
                    &[("Content-Type", CONTENT_TYPE)],
                    &body,
                );
                200
            }
        }
    };
    log::debug!("metrics peer={peer} status={status}");
    let mut stream = wire.stream;
    close_gracefully(&mut stream, &out, Duration::from_secs(2)).await;
}

/// Why no request was read.
enum Bad {
    Gone,
    Head,
}

impl From<Gone> for Bad {
    fn from(_: Gone) -> Bad {
        Bad::Gone
    }
}

/// Whether the request may see the figures: always without
/// `metrics.users`, else with one of them in Basic authentication.
fn allowed(cfg: &Metrics, authorization: Option<&str>) -> bool {
    let Some(users) = &cfg.users else {
        return true;
    };
    authorization
        .and_then(|v| auth::parse_basic(v).ok())
        .is_some_and(|c| users.accepts(c.user.as_bytes(), c.field.as_bytes()))
}
