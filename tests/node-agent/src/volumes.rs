//! A pod's volumes, written to files under the pod's directory before its containers start:
//! emptyDir, Secret, ConfigMap, downwardAPI and projected (which is how the ServiceAccount
//! admission plugin adds the token, `kube-root-ca.crt` and the namespace at
//! /var/run/secrets/kubernetes.io/serviceaccount). Tokens come from the TokenRequest API,
//! bound to the pod, as a kubelet asks for them. The worker writes them again every
//! [`RESYNC`] (a rotated Secret reaches the pod as it does under a kubelet; tokens only when
//! [`TOKEN_REFRESH`] has passed). Files are replaced by rename, so a reader never sees half a
//! file. I/O: the API server and files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::env::field_ref;

/// How often a running pod's volumes are written again (a kubelet takes up to a minute and
/// its cache's TTL; tests want a rotation seen sooner).
pub const RESYNC: Duration = Duration::from_secs(10);
/// Tokens are asked for again after 80 % of their default life (3607 s), as a kubelet does.
pub const TOKEN_REFRESH: Duration = Duration::from_secs(2880);

/// Writes every volume of `pod` under `dir/<volume name>/`; ServiceAccount tokens only when
/// `tokens` is true (the first time, then after [`TOKEN_REFRESH`]).
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    dir: &Path,
    tokens: bool,
) -> anyhow::Result<()> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        let target = dir.join(&volume.name);
        std::fs::create_dir_all(&target)?;
        write_volume(client, pod, namespace, volume, &target, tokens)
            .await
            .with_context(|| format!("volume {}", volume.name))?;
    }
    Ok(())
}

async fn write_volume(
    client: &kube::Client,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    target: &Path,
    tokens: bool,
) -> anyhow::Result<()> {
    if volume.empty_dir.is_some() {
        return Ok(());
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.as_deref().unwrap_or_default();
        let data = secret_data(client, namespace, name, secret.optional.unwrap_or(false)).await?;
        return write_items(target, &data, secret.items.as_deref());
    }
    if let Some(config_map) = &volume.config_map {
        let data = config_map_data(
            client,
            namespace,
            &config_map.name,
            config_map.optional.unwrap_or(false),
        )
        .await?;
        return write_items(target, &data, config_map.items.as_deref());
    }
    if let Some(downward) = &volume.downward_api {
        return write_downward(target, pod, downward.items.as_deref().unwrap_or_default());
    }
    if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(token) = source.service_account_token.as_ref().filter(|_| tokens) {
                let jwt = token_for(
                    client,
                    pod,
                    token.audience.clone(),
                    token.expiration_seconds,
                )
                .await?;
                write_file(&target.join(&token.path), jwt.as_bytes())?;
            }
            if let Some(config_map) = &source.config_map {
                let data = config_map_data(
                    client,
                    namespace,
                    &config_map.name,
                    config_map.optional.unwrap_or(false),
                )
                .await?;
                write_items(target, &data, config_map.items.as_deref())?;
            }
            if let Some(secret) = &source.secret {
                let data = secret_data(
                    client,
                    namespace,
                    &secret.name,
                    secret.optional.unwrap_or(false),
                )
                .await?;
                write_items(target, &data, secret.items.as_deref())?;
            }
            if let Some(downward) = &source.downward_api {
                write_downward(target, pod, downward.items.as_deref().unwrap_or_default())?;
            }
        }
        return Ok(());
    }
    bail!("unsupported volume type (emptyDir, secret, configMap, downwardAPI, projected are)")
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?
    {
        Some(secret) => Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        None if optional => Ok(BTreeMap::new()),
        None => bail!("Secret {namespace}/{name} not found"),
    }
}

async fn config_map_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api
        .get_opt(name)
        .await
        .with_context(|| format!("reading ConfigMap {name}"))?
    {
        Some(map) => {
            let mut data: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                map.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("ConfigMap {namespace}/{name} not found"),
    }
}

/// A token for the pod's ServiceAccount, bound to the pod (deleting the pod revokes it).
pub async fn token_for(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: Option<i64>,
) -> anyhow::Result<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {
            "audiences": audience.into_iter().collect::<Vec<_>>(),
            "expirationSeconds": expiration_seconds.unwrap_or(3607),
            "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod",
                "name": pod.metadata.name, "uid": pod.metadata.uid,
            },
        }
    }))?;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let answer = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{account}"))?;
    Ok(answer.status.map(|s| s.token).unwrap_or_default())
}

fn write_items(
    target: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> anyhow::Result<()> {
    match items {
        None => {
            for (key, value) in data {
                write_file(&target.join(key), value)?;
            }
        }
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .with_context(|| format!("no key {}", item.key))?;
                write_file(&target.join(&item.path), value)?;
            }
        }
    }
    Ok(())
}

fn write_downward(target: &Path, pod: &Pod, items: &[DownwardAPIVolumeFile]) -> anyhow::Result<()> {
    for item in items {
        let value = match &item.field_ref {
            Some(field) => field_ref(pod, &field.field_path, None)
                .with_context(|| format!("fieldRef {}", field.field_path))?,
            None => bail!("downwardAPI item {}: only fieldRef is supported", item.path),
        };
        write_file(&target.join(&item.path), value.as_bytes())?;
    }
    Ok(())
}

fn write_file(path: &Path, value: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::read(path).is_ok_and(|old| old == value) {
        return Ok(());
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&temporary, value)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// The directory a volume of the pod was written to.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}
