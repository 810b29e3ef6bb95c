//! `redis-pair proxy`: the sidecar that follows one RedisPair's published master.

use crate::cli::ProxyArgs;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("the sidecar is not built yet")]
    NotBuilt,
}

impl SidecarError {
    pub fn exit_code(&self) -> u8 {
        1
    }
}

pub async fn run(_args: ProxyArgs) -> Result<(), SidecarError> {
    Err(SidecarError::NotBuilt)
}
