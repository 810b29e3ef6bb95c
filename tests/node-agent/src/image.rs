//! Which binary of this machine an image stands for, and the argv a container runs: images
//! are not pulled, each name is mapped to a program (`--image redis=/usr/bin/redis-server`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    #[error("no binary for image {0:?} (map one with --image NAME=PATH)")]
    Unknown(String),
    #[error("--image {0:?} is not NAME=PATH")]
    Malformed(String),
}

#[derive(Clone, Debug, Default)]
pub struct Images {
    entrypoints: BTreeMap<String, PathBuf>,
}

impl Images {
    pub fn new(specs: &[String]) -> Result<Self, ImageError> {
        let mut entrypoints = BTreeMap::new();
        for spec in specs {
            let (name, path) = spec
                .split_once('=')
                .ok_or_else(|| ImageError::Malformed(spec.clone()))?;
            entrypoints.insert(name.to_string(), PathBuf::from(path));
        }
        Ok(Self { entrypoints })
    }

    /// The argv of a container: Kubernetes' `command` replaces the image's entrypoint and
    /// `args` its CMD. The `redis` image's entrypoint behaves like its docker-entrypoint.sh: no
    /// args or args that start with `-` or name a `.conf` run redis-server with them; other args
    /// are the command; protected mode is off, as the image builds redis-server. A command naming the image's program (`redis-server`,
    /// `/usr/local/bin/redis-pair`) runs the mapped binary; any other runs as found on PATH.
    pub fn argv(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> Result<Vec<String>, ImageError> {
        let name = image_name(image);
        let entrypoint = self
            .entrypoints
            .get(name)
            .ok_or_else(|| ImageError::Unknown(image.to_string()))?;
        let entry = entrypoint.display().to_string();
        let mut argv: Vec<String> = if !command.is_empty() {
            command.iter().chain(args).cloned().collect()
        } else if name == "redis" {
            match args.first() {
                None => vec![entry.clone()],
                Some(first) if first.starts_with('-') || first.ends_with(".conf") => {
                    std::iter::once(entry.clone())
                        .chain(args.iter().cloned())
                        .collect()
                }
                Some(_) => args.to_vec(),
            }
        } else {
            std::iter::once(entry.clone())
                .chain(args.iter().cloned())
                .collect()
        };
        let program = Path::new(&argv[0])
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let mapped = entrypoint.file_name().and_then(|n| n.to_str());
        if program == name || Some(program) == mapped {
            argv[0] = entry;
            // The official image builds redis-server with protected mode off (a pod is reached
            // from other pods, not only on loopback); arguments after a config file override it.
            if name == "redis" {
                let at = if argv.get(1).is_some_and(|a| a.ends_with(".conf")) {
                    2
                } else {
                    1
                };
                argv.splice(at..at, ["--protected-mode".to_string(), "no".to_string()]);
            }
        }
        Ok(argv)
    }
}

/// `docker.io/library/redis:7.4@sha256:…` → `redis`.
fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Images {
        Images::new(&[
            "redis=/usr/bin/redis-server".into(),
            "redis-pair=/build/redis-pair".into(),
        ])
        .unwrap()
    }
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_lose_registry_tag_and_digest() {
        assert_eq!(image_name("redis"), "redis");
        assert_eq!(image_name("docker.io/library/redis:7.4@sha256:00"), "redis");
        assert_eq!(image_name("localhost:5000/x/redis-pair:0.1"), "redis-pair");
    }

    #[test]
    fn the_redis_image_behaves_like_its_entrypoint_script() {
        let i = images();
        let server = ["/usr/bin/redis-server", "--protected-mode", "no"];
        assert_eq!(i.argv("redis:7", &[], &[]).unwrap(), s(&server));
        assert_eq!(
            i.argv("redis:7", &[], &s(&["--port", "7000"])).unwrap(),
            s(&[&server[..], &["--port", "7000"]].concat())
        );
        assert_eq!(
            i.argv(
                "redis:7",
                &s(&["redis-server"]),
                &s(&["/etc/r.conf", "--port", "1"])
            )
            .unwrap(),
            s(&[
                "/usr/bin/redis-server",
                "/etc/r.conf",
                "--protected-mode",
                "no",
                "--port",
                "1"
            ])
        );
        assert_eq!(
            i.argv("redis:7", &[], &s(&["sh", "-c", "exit 0"])).unwrap(),
            s(&["sh", "-c", "exit 0"])
        );
    }

    #[test]
    fn other_images_prepend_their_entrypoint_and_map_their_own_program() {
        let i = images();
        assert_eq!(
            i.argv("ghcr.io/x/redis-pair:1", &[], &s(&["proxy"]))
                .unwrap(),
            s(&["/build/redis-pair", "proxy"])
        );
        assert_eq!(
            i.argv(
                "redis-pair",
                &s(&["/usr/local/bin/redis-pair", "controller"]),
                &[]
            )
            .unwrap(),
            s(&["/build/redis-pair", "controller"])
        );
        assert_eq!(
            i.argv("nginx", &[], &[]),
            Err(ImageError::Unknown("nginx".into()))
        );
    }
}
