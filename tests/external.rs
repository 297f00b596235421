//! A two-participant call against a Plaza that runs elsewhere (the Docker image, in
//! scripts/docker-test.sh): `PLAZA_EXTERNAL=127.0.0.1:PORT cargo test --test external -- --ignored`.

mod common;

use std::time::Duration;

use common::verify::stop_and_verify;
use common::{wait_for, Client, ClientOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running Plaza: set PLAZA_EXTERNAL=host:port"]
async fn a_call_through_an_external_server() {
    let addr = std::env::var("PLAZA_EXTERNAL").expect("PLAZA_EXTERNAL=host:port");
    let url = format!("ws://{addr}/ws");
    let ann = Client::join(&url, "external", "Ann", ClientOptions::default()).await;
    let bob = Client::join(&url, "external", "Bob", ClientOptions::default()).await;
    let ids = vec![ann.participant_id().await, bob.participant_id().await];
    for c in [&ann, &bob] {
        wait_for(
            &format!("{}'s media", c.name),
            Duration::from_secs(20),
            || c.flowing_tracks(50) == 2,
        )
        .await;
    }
    let clients = [ann, bob];
    stop_and_verify(&clients, &ids).await;
    common::leave_all(clients).await;
}
