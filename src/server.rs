//! The HTTP/1.1 server: accept loop, connection limits, top-level dispatch, graceful shutdown.
//!
//! Dispatch keeps the hot path apart: `/api/…` goes to the management API, `/healthz`, `/readyz`,
//! `/metrics` to `ops`, and every other single-segment path to the redirector, which sees only the
//! method and the code.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::{api, ops, redirect};

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Everything: redirects, API, console, and the ops routes (`/metrics` only when there is no admin
    /// listener).
    Public,
    /// `LINKHIT_ADMIN_LISTEN`: `/metrics`, `/healthz`, `/readyz` only, with their own connection limit,
    /// so public traffic holding every public slot cannot starve a health check or a scrape.
    Admin,
}

/// Serves connections from `listener` until `shutdown` is cancelled, then stops accepting and gives
/// in-flight requests up to the configured grace period.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    serve_as(Listener::Public, listener, app, shutdown).await;
}

/// [`serve`] for one kind of listener.
pub async fn serve_as(kind: Listener, listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(app.config.header_read_timeout)
        .max_buf_size(app.config.max_header_bytes);
    let graceful = GracefulShutdown::new();
    // Past the limit we simply stop accepting: new connections wait in the kernel's backlog instead
    // of exhausting file descriptors or memory.
    let limit = match kind {
        Listener::Public => app.config.max_connections,
        Listener::Admin => app.config.admin_max_connections,
    };
    let slots = Arc::new(Semaphore::new(limit));

    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("semaphore never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let peer = Some(peer.ip());
        let service = service_fn(move |req| {
            let app = Arc::clone(&app);
            async move {
                match kind {
                    Listener::Public => dispatch(app, req, peer).await,
                    Listener::Admin => Ok(admin_dispatch(&app, &req).await),
                }
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(app.config.shutdown_grace) => {
            tracing::warn!("shutdown grace period elapsed with connections still open");
        }
    }
}

async fn dispatch(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: Option<std::net::IpAddr>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let is_ops = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let response = if is_ops && !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        redirect::respond::response(redirect::respond::Outcome::MethodNotAllowed, None, req.method(), None)
    } else if path == "/metrics" && app.config.admin_listen.is_some() {
        // Served only on the admin listener.
        redirect::respond::response(redirect::respond::Outcome::NotFound, None, req.method(), None)
    } else if !app.config.role.serves() && !is_ops {
        worker_only()
    } else if path.starts_with("/api/") || path == "/api" {
        api::handle(&app, req).await
    } else if path == "/track" {
        api::conversions::track(&app, req, peer).await
    } else {
        match path {
            "/healthz" => ops::healthz(),
            "/readyz" => ops::readyz(&app).await,
            "/metrics" => ops::metrics(&app),
            _ if path == "/ui" || path.starts_with("/ui/") => crate::ui::serve(path).unwrap_or_else(|| {
                redirect::respond::response(redirect::respond::Outcome::NotFound, None, req.method(), None)
            }),
            _ => {
                // The redirector never reads a body; dropping it keeps the connection reusable.
                let (parts, _body) = req.into_parts();
                redirect::handle(&app.resolver, &app.redirect_metrics, &app.capture, &parts, peer).await
            }
        }
    };
    Ok(response)
}

/// The admin listener: the ops routes and nothing else.
async fn admin_dispatch(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        return redirect::respond::response(redirect::respond::Outcome::MethodNotAllowed, None, req.method(), None);
    }
    match req.uri().path() {
        "/healthz" => ops::healthz(),
        "/readyz" => ops::readyz(app).await,
        "/metrics" => ops::metrics(app),
        _ => redirect::respond::response(redirect::respond::Outcome::NotFound, None, req.method(), None),
    }
}

/// What a `LINKHIT_ROLE=worker` instance answers outside the ops endpoints.
fn worker_only() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"This linkhit instance only delivers webhooks (LINKHIT_ROLE=worker).\n",
    )));
    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
    response
}
