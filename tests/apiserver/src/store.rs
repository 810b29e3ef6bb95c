//! The in-memory store: every object under one global resourceVersion counter (etcd's
//! revision), and the history of changes that watches resume from, continue tokens read
//! consistent pages from, and compaction forgets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::resources::{GroupResource, Registry};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as the history keeps it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: GroupResource,
    pub kind: ChangeKind,
    /// The object after the change; for a deletion, its last state carrying the deletion's
    /// resourceVersion (what a real watch sends).
    pub object: Arc<Value>,
    /// The object before the change (None for an addition).
    pub previous: Option<Arc<Value>>,
}

/// The resourceVersion asked for is older than the history kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooOld {
    pub oldest: u64,
}

/// `namespace`, `name`: the order a real server lists in (etcd key order).
pub type ObjectKey = (String, String);

type Objects = BTreeMap<ObjectKey, Arc<Value>>;

/// How many changes the history keeps before the oldest are compacted away on their own
/// (the real server's watch cache keeps far fewer; tests compact explicitly).
const MAX_HISTORY: usize = 100_000;

pub struct State {
    rv: u64,
    pub registry: Registry,
    objects: BTreeMap<GroupResource, Objects>,
    history: VecDeque<Change>,
    /// Every change after this resourceVersion is in `history`.
    compacted: u64,
}

pub fn key_of(object: &Value) -> ObjectKey {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

fn with_resource_version(object: &Value, rv: u64) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    object
}

impl Default for State {
    fn default() -> Self {
        State {
            rv: 1,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1,
        }
    }
}

impl State {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, resource: &GroupResource, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The current objects of a resource, in one namespace or all, in key order.
    pub fn list(&self, resource: &GroupResource, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(objects) = self.objects.get(resource) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| ns == want))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// The objects of a resource as they were at `rv`, rebuilt by undoing the newer changes
    /// (what etcd's historical reads give continue tokens and `resourceVersionMatch=Exact`).
    pub fn snapshot_at(
        &self,
        resource: &GroupResource,
        rv: u64,
    ) -> Result<Vec<Arc<Value>>, TooOld> {
        if rv < self.compacted {
            return Err(TooOld {
                oldest: self.compacted,
            });
        }
        let mut objects = self.objects.get(resource).cloned().unwrap_or_default();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.resource != *resource {
                continue;
            }
            let key = key_of(&change.object);
            match &change.previous {
                Some(previous) => {
                    objects.insert(key, previous.clone());
                }
                None => {
                    objects.remove(&key);
                }
            }
        }
        Ok(objects.into_values().collect())
    }

    fn record(
        &mut self,
        resource: &GroupResource,
        kind: ChangeKind,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        self.history.push_back(Change {
            rv: self.rv,
            resource: resource.clone(),
            kind,
            object,
            previous,
        });
        while self.history.len() > MAX_HISTORY {
            if let Some(oldest) = self.history.pop_front() {
                self.compacted = oldest.rv;
            }
        }
    }

    /// Stores a new object under the next resourceVersion; returns it as stored.
    pub fn create(&mut self, resource: &GroupResource, object: Value) -> Arc<Value> {
        self.rv += 1;
        let object = Arc::new(with_resource_version(&object, self.rv));
        self.objects
            .entry(resource.clone())
            .or_default()
            .insert(key_of(&object), object.clone());
        self.record(resource, ChangeKind::Added, object.clone(), None);
        object
    }

    /// Replaces a stored object under the next resourceVersion.
    pub fn update(&mut self, resource: &GroupResource, object: Value) -> Arc<Value> {
        self.rv += 1;
        let object = Arc::new(with_resource_version(&object, self.rv));
        let previous = self
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key_of(&object), object.clone());
        self.record(resource, ChangeKind::Modified, object.clone(), previous);
        object
    }

    /// Removes an object; returns its last state with the deletion's resourceVersion.
    pub fn delete(
        &mut self,
        resource: &GroupResource,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Value>> {
        let previous = self
            .objects
            .get_mut(resource)?
            .remove(&(namespace.to_string(), name.to_string()))?;
        self.rv += 1;
        let object = Arc::new(with_resource_version(&previous, self.rv));
        self.record(
            resource,
            ChangeKind::Deleted,
            object.clone(),
            Some(previous),
        );
        Some(object)
    }

    /// The changes of a resource after `rv`, oldest first.
    pub fn changes_after(&self, resource: &GroupResource, rv: u64) -> Result<Vec<Change>, TooOld> {
        if rv < self.compacted {
            return Err(TooOld {
                oldest: self.compacted,
            });
        }
        let newer = self.history.len() - self.history.partition_point(|c| c.rv <= rv);
        Ok(self
            .history
            .iter()
            .skip(self.history.len() - newer)
            .filter(|c| c.resource == *resource)
            .cloned()
            .collect())
    }

    /// Forgets the history before now: resuming from any older resourceVersion gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Drops every object of a resource (a deleted CRD's objects), recording the deletions.
    pub fn delete_all(&mut self, resource: &GroupResource) -> Vec<Arc<Value>> {
        let keys: Vec<ObjectKey> = self
            .objects
            .get(resource)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|(ns, name)| self.delete(resource, ns, name))
            .collect()
    }

    /// Every resource that has objects in a namespace.
    pub fn resources_in_namespace(&self, namespace: &str) -> Vec<GroupResource> {
        self.objects
            .iter()
            .filter(|(_, objects)| objects.keys().any(|(ns, _)| ns == namespace))
            .map(|(resource, _)| resource.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, v: i64) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name}, "spec": {"v": v}})
    }

    #[test]
    fn history_resumes_after_a_version_and_forgets_on_compaction() {
        let pods = GroupResource::new("", "pods");
        let secrets = GroupResource::new("", "secrets");
        let mut state = State::default();
        let a = state.create(&pods, pod("a", 1));
        let start: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("rv");
        state.create(&secrets, pod("s", 1));
        state.update(&pods, pod("a", 2));
        state.delete(&pods, "ns", "a");
        let changes = state.changes_after(&pods, start).expect("kept");
        let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, vec![ChangeKind::Modified, ChangeKind::Deleted]);
        assert_eq!(
            changes[1].object["spec"]["v"], 2,
            "a deletion carries the last state"
        );
        assert_eq!(
            changes[1].object["metadata"]["resourceVersion"],
            state.resource_version().to_string()
        );
        state.compact();
        assert_eq!(
            state.changes_after(&pods, start).err(),
            Some(TooOld {
                oldest: state.resource_version()
            })
        );
        assert!(
            state
                .changes_after(&pods, state.resource_version())
                .expect("now is kept")
                .is_empty()
        );
    }

    #[test]
    fn snapshots_rebuild_the_past() {
        let pods = GroupResource::new("", "pods");
        let mut state = State::default();
        state.create(&pods, pod("a", 1));
        state.create(&pods, pod("b", 1));
        let then = state.resource_version();
        state.update(&pods, pod("a", 2));
        state.delete(&pods, "ns", "b");
        state.create(&pods, pod("c", 1));
        let past = state.snapshot_at(&pods, then).expect("kept");
        let names: Vec<(&str, i64)> = past
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap_or(""),
                    o["spec"]["v"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(names, vec![("a", 1), ("b", 1)]);
        state.compact();
        assert!(state.snapshot_at(&pods, then).is_err());
    }
}
