//! Watch: newline-delimited `WatchEvent`s from a resourceVersion on (after a synthetic ADDED
//! of every current object when none or "0" is given), selectors applied to each change as the
//! watch cache does (an object that stops matching arrives as DELETED, one that starts as
//! ADDED), BOOKMARKs when asked for, an ERROR 410 when the version is older than the history,
//! and the end of the stream at `timeoutSeconds`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::{Api, Body, Reply, render};
use crate::request::{Output, Query};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiResult, Status};
use crate::store::{Change, ChangeKind};

/// The lines of a watch response; an `Err` ends the stream abruptly (a dropped connection).
pub type WatchStream = mpsc::Receiver<Result<Bytes, std::io::Error>>;

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, kind: &ResourceType, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self
                .labels
                .matches(object["metadata"]["labels"].as_object())
            && self.fields.matches(kind, object)
    }
}

/// The event a change becomes for one watcher, if any (`cacheWatcher.convertToWatchEvent`).
fn event_for(
    kind: &ResourceType,
    filter: &Filter,
    change: &Change,
) -> Option<(&'static str, Value)> {
    let now = filter.matches(kind, &change.object);
    match change.kind {
        ChangeKind::Added => now.then(|| ("ADDED", (*change.object).clone())),
        ChangeKind::Deleted => now.then(|| ("DELETED", (*change.object).clone())),
        ChangeKind::Modified => {
            let before = change
                .previous
                .as_ref()
                .is_some_and(|p| filter.matches(kind, p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", (*change.object).clone())),
                (false, true) => Some(("ADDED", (*change.object).clone())),
                (true, false) => {
                    // The previous content, carrying this change's resourceVersion.
                    let mut previous = change.previous.as_deref().cloned().unwrap_or(Value::Null);
                    if let Some(meta) = previous.get_mut("metadata").and_then(Value::as_object_mut)
                    {
                        meta.insert("resourceVersion".into(), change.rv.to_string().into());
                    }
                    Some(("DELETED", previous))
                }
                (false, false) => None,
            }
        }
    }
}

fn line(event_type: &str, object: Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Starts a watch; the reply streams until the timeout, a client hang-up or a fault.
pub fn start(
    api: &Arc<Api>,
    kind: &Arc<ResourceType>,
    namespace: Option<&str>,
    query: &Query,
    output: Output,
) -> ApiResult<Reply> {
    let filter = Filter {
        namespace: namespace.map(str::to_string),
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind)?,
    };
    let from = match query.get("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        rv => Some(
            rv.parse::<u64>()
                .map_err(|_| Status::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    if query.flag("sendInitialEvents") {
        // What a server without the WatchList feature answers.
        let error = crate::status::FieldError::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        );
        return Err(Status::invalid(
            "ListOptions.meta.k8s.io",
            "meta.k8s.io",
            "",
            &[error],
        ));
    }
    // Without timeoutSeconds the real server picks a random timeout of 30-60 minutes.
    let timeout = match query.integer("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        _ => Duration::from_secs(1800 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 7),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let (sender, receiver) = mpsc::channel(256);
    let watcher = Watcher {
        api: api.clone(),
        kind: kind.clone(),
        filter,
        output,
        bookmarks,
        sender,
    };
    tokio::spawn(watcher.run(from, Instant::now() + timeout));
    Ok(Reply {
        code: 200,
        content_type: "application/json",
        body: Body::Watch(receiver),
        warnings: Vec::new(),
    })
}

struct Watcher {
    api: Arc<Api>,
    kind: Arc<ResourceType>,
    filter: Filter,
    output: Output,
    bookmarks: bool,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Watcher {
    /// Sends one event; false once the client has gone.
    async fn send(&self, event_type: &str, object: &Value, headers: &mut bool) -> bool {
        let rendered = render(&self.kind, object, self.output, *headers);
        *headers = false;
        self.sender
            .send(Ok(line(event_type, rendered)))
            .await
            .is_ok()
    }

    async fn run(self, from: Option<u64>, deadline: Instant) {
        let mut changes = self.api.changes.subscribe();
        let mut drops = self.api.drops.subscribe();
        drops.borrow_and_update();
        let resource = self.kind.storage_resource();
        let mut headers = true;
        let (mut cursor, initial) = {
            let state = self.api.lock();
            match from {
                Some(rv) => (rv, Vec::new()),
                None => (
                    state.resource_version(),
                    state.list(&resource, self.filter.namespace.as_deref()),
                ),
            }
        };
        for object in initial
            .iter()
            .filter(|o| self.filter.matches(&self.kind, o))
        {
            if !self.send("ADDED", object, &mut headers).await {
                return;
            }
        }
        let mut next_bookmark = Instant::now() + self.api.bookmark_interval;
        loop {
            let batch = {
                let state = self.api.lock();
                let batch = state.changes_after(&resource, cursor);
                let newest = state.resource_version();
                batch.map(|b| (b, newest))
            };
            let (batch, newest) = match batch {
                Ok(found) => found,
                Err(too_old) => {
                    let status = Status::gone(format!(
                        "too old resource version: {cursor} ({})",
                        too_old.oldest
                    ));
                    let _ = self.sender.send(Ok(line("ERROR", status.to_json()))).await;
                    return;
                }
            };
            cursor = cursor.max(newest);
            for change in &batch {
                if let Some((event_type, object)) = event_for(&self.kind, &self.filter, change)
                    && !self.send(event_type, &object, &mut headers).await
                {
                    return;
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = drops.changed() => {
                    let _ = self.sender.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "watch dropped"))).await;
                    return;
                }
                _ = tokio::time::sleep_until(next_bookmark) => {
                    next_bookmark = Instant::now() + self.api.bookmark_interval;
                    if self.bookmarks {
                        let bookmark = json!({
                            "kind": match self.output { Output::Metadata => "PartialObjectMetadata".to_string(), _ => self.kind.kind.clone() },
                            "apiVersion": match self.output { Output::Metadata => "meta.k8s.io/v1".to_string(), _ => self.kind.api_version() },
                            "metadata": {"resourceVersion": cursor.to_string()},
                        });
                        if self.sender.send(Ok(line("BOOKMARK", bookmark))).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.sender.closed() => return,
            }
        }
    }
}
