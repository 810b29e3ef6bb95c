//! A container's environment as a kubelet builds it: the API server's address
//! (`KUBERNETES_SERVICE_HOST/PORT`, so in-cluster configuration works), `envFrom`, then `env`
//! with `value` (`$(VAR)` expanded), downward-API `fieldRef`s and Secret and ConfigMap keys.
//! The same `$(VAR)` expansion applies to command and args.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

/// What a container's environment needs beyond the pod.
pub struct Context<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub pod_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    pub api_host: Ipv4Addr,
    pub api_port: u16,
}

pub async fn build(
    ctx: &Context<'_>,
    container: &Container,
) -> anyhow::Result<Vec<(String, String)>> {
    let namespace = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        (
            "HOSTNAME".into(),
            ctx.pod.metadata.name.clone().unwrap_or_default(),
        ),
        ("HOME".into(), "/root".into()),
        ("KUBERNETES_SERVICE_HOST".into(), ctx.api_host.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), ctx.api_port.to_string()),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            ctx.api_port.to_string(),
        ),
        (
            "KUBERNETES_PORT".into(),
            format!("tcp://{}:{}", ctx.api_host, ctx.api_port),
        ),
    ];
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(map) = &from.config_map_ref {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
            match api.get_opt(&map.name).await? {
                Some(m) => m.data.unwrap_or_default(),
                None if map.optional == Some(true) => BTreeMap::new(),
                None => bail!("envFrom: ConfigMap {} not found", map.name),
            }
        } else if let Some(secret) = &from.secret_ref {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            match api.get_opt(&secret.name).await? {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if secret.optional == Some(true) => BTreeMap::new(),
                None => bail!("envFrom: Secret {} not found", secret.name),
            }
        } else {
            BTreeMap::new()
        };
        for (key, value) in data {
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            expand(value, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_ref(ctx.pod, &field.field_path, Some((ctx.pod_ip, ctx.node_ip)))
                    .with_context(|| format!("env {}: fieldRef {}", var.name, field.field_path))?
            } else if let Some(key) = &from.secret_key_ref {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
                let secret = api.get_opt(&key.name).await?;
                match secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(&key.key).cloned())
                {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if key.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: Secret key {}/{} not found",
                        var.name,
                        key.name,
                        key.key
                    ),
                }
            } else if let Some(key) = &from.config_map_key_ref {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
                let map = api.get_opt(&key.name).await?;
                match map
                    .and_then(|m| m.data)
                    .and_then(|d| d.get(&key.key).cloned())
                {
                    Some(v) => v,
                    None if key.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: ConfigMap key {}/{} not found",
                        var.name,
                        key.name,
                        key.key
                    ),
                }
            } else {
                bail!(
                    "env {}: only fieldRef, secretKeyRef and configMapKeyRef are supported",
                    var.name
                )
            }
        } else {
            String::new()
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

/// A downward-API field; `ips` (pod, node) only for env, volumes have no status fields.
pub fn field_ref(
    pod: &Pod,
    path: &str,
    ips: Option<(Ipv4Addr, Ipv4Addr)>,
) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" if ips.is_some() => {
            ips.map(|i| i.0.to_string()).unwrap_or_default()
        }
        "status.hostIP" | "status.hostIPs" if ips.is_some() => {
            ips.map(|i| i.1.to_string()).unwrap_or_default()
        }
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" {
                &meta.labels
            } else {
                &meta.annotations
            };
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect()
        }
        _ => keyed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref()))
            .with_context(|| format!("unsupported field {path}"))?,
    };
    Ok(value)
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a `$`, anything
/// else is left as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_replaces_defined_variables_only() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("no vars", &env), "no vars");
    }
}
