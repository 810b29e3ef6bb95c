//! A test API server for the controller's unit tests: the project's own (`test-apiserver`),
//! serving RedisPairs, with one RedisPair to work on.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, Client, CustomResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::crd::RedisPair;

pub const PAIR: &str = "cache";
const DEADLINE: Duration = Duration::from_secs(10);

/// A test API server serving RedisPairs, with RedisPair `cache` in `default`.
pub async fn api_server() -> Result<(test_apiserver::ApiServer, Client, RedisPair), String> {
    let server = test_apiserver::ApiServer::start(test_apiserver::Options::default())
        .await
        .map_err(|e| format!("start the test API server: {e}"))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml())
        .map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &RedisPair::crd())
        .await
        .map_err(|e| format!("create the CRD: {e}"))?;
    let pairs: Api<RedisPair> = Api::namespaced(client.clone(), "default");
    let spec: crate::crd::RedisPairSpec =
        serde_json::from_value(json!({"selector": {"matchLabels": {"app": PAIR}}}))
            .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let pair = loop {
        // The CRD is served a moment after it is created.
        match pairs
            .create(&PostParams::default(), &RedisPair::new(PAIR, spec.clone()))
            .await
        {
            Ok(pair) => break pair,
            Err(e) if started.elapsed() > DEADLINE => return Err(format!("create {PAIR}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Ok((server, client, pair))
}
