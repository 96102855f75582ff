//! WebSocket through the HTTP proxy, with tokio-tungstenite on both ends: 1000 messages echoed
//! through the tunnel; the open socket holding the backend's `max_requests` slot until it closes;
//! and a backend killed mid-socket closing the client's socket.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{net::TcpListener, task::AbortHandle};
use tokio_tungstenite::tungstenite::Message;
use understudy::{
    config::Config,
    l7::{
        self, ServiceProxy,
        availability::{MemberView, PoolView, new_availability},
        metrics::L7Metrics,
    },
};

/// A WebSocket echo server; its connection tasks can be killed.
struct EchoBackend {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl EchoBackend {
    async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let kept = tasks.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let task = tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() || m.is_binary() {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        } else if m.is_close() {
                            return;
                        }
                    }
                });
                kept.lock().unwrap().push(task.abort_handle());
            }
        });
        EchoBackend { addr, tasks }
    }

    /// Kills every connection it holds, as a backend process dying would.
    fn kill_connections(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A proxy in front of `backend` with `max_requests = 1`, served on loopback.
async fn proxy(backend: SocketAddr) -> SocketAddr {
    let text = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\n[[service]]\nname = \"ws\"\nvip = \"127.0.0.1:1\"\n\
         mode = \"http\"\n[service.circuit]\nmax_requests = 1\n[[service.backend]]\naddress = \"{backend}\"\n"
    );
    let config = Config::parse(std::path::Path::new("ws-test.toml"), &text).unwrap();
    let availability = new_availability();
    availability.write().unwrap().insert(
        "ws".into(),
        Arc::new(PoolView::new(vec![MemberView::new(
            backend, 0, 1, true, true,
        )])),
    );
    let service = ServiceProxy::new(
        &config.services[0],
        availability,
        None,
        None,
        L7Metrics::default(),
        &Arc::new(understudy::l7::auth::Credentials::new(&config.gateway)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(l7::serve(
        listener,
        Arc::new(ArcSwap::from_pointee(service)),
    ));
    addr
}

#[tokio::test]
async fn a_websocket_echoes_1000_messages_and_holds_its_request_slot_until_it_closes() {
    let backend = EchoBackend::start().await;
    let addr = proxy(backend.addr).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .expect("the proxy upgrades the connection");
    assert_eq!(resp.status(), 101);
    for i in 0..1000 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    // The open socket holds the backend's only slot (max_requests = 1).
    let second = tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a second socket while the first is open: {other:?}"),
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // Closed (the client keeps its half-closed socket; the tunnel closes it within its 1 s
    // grace): the slot is free again.
    let mut freed = false;
    for _ in 0..100 {
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat")).await
        {
            ws.send(Message::text("again")).await.unwrap();
            assert_eq!(
                ws.next()
                    .await
                    .unwrap()
                    .unwrap()
                    .into_text()
                    .unwrap()
                    .as_str(),
                "again"
            );
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the closed socket never gave its slot back");
}

#[tokio::test]
async fn a_backend_killed_mid_socket_closes_the_clients_socket() {
    let backend = EchoBackend::start().await;
    let addr = proxy(backend.addr).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .unwrap();
    for i in 0..10 {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    backend.kill_connections();
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the client's socket stayed open after the backend died"
    );
}
