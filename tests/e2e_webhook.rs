//! End-to-end for the c2s webhook through the real `tidegate up`: a
//! client's acked C2S arrives at a local HTTP receiver as a JSON batch, not
//! on the c2s stream, and the delivered counter shows on `/metrics`.

mod common;

use axum::routing::post;
use axum::{Json, Router};
use common::{metric, token, Backend, Tidegate};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidegate_proto::client::Client;
use tidegate_proto::{AppCode, MsgType};

/// Starts a receiver that accepts everything; returns its URL and bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Default::default();
    let seen = bodies.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

async fn get(tg: &Tidegate, path: &str) -> Value {
    common::get_json(&tg.url(path)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2s_of_a_webhook_app_is_posted_instead_of_streamed() {
    let (url, bodies) = receiver().await;
    let config = format!(
        r#"
[[apps]]
code = 1
secrets = ["tidegate-dev-secret-app-1"]
api_key = "tidegate-dev-api-key-app-1"
c2s_webhook = {{ url = "{url}", batch_max = 100, batch_wait_ms = 20, retries = 3 }}
"#
    );
    let tg = Tidegate::up(&Backend::Embedded, &config);
    let mut c = Client::connect(tg.client).await.expect("connect");
    c.login(AppCode(1), &token(1, "rider-1"), "dev", "ios")
        .await
        .expect("login");
    for i in 0..3 {
        c.send_c2s(
            MsgType(5),
            "text/plain",
            format!("ping {i}").into_bytes(),
            true,
        )
        .await
        .expect("acked c2s");
    }
    let mut messages = Vec::new();
    for _ in 0..500 {
        messages = bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["messages"].as_array().cloned().unwrap_or_default())
            .collect();
        if messages.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0]["uid"], "rider-1");
    assert_eq!(messages[0]["msgtype"], 5);
    assert_eq!(messages[2]["content"], "ping 2");
    assert_eq!(bodies.lock().unwrap()[0]["app"], 1);

    let page = get(&tg, "/v1/streams/c2s?app=1&msgtype=5").await;
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(0), "{page}");
    let text = tg.logic_metrics().await;
    let delivered = metric(&text, "tidegate_logic_webhook_delivered_total", "app=\"1\"");
    assert_eq!(delivered, 3.0, "{text}");
}
