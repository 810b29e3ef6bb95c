//! `redis-pair controller`: keeps every RedisPair's Redis pods highly available.

use crate::cli::ControllerArgs;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the controller is not built yet")]
    NotBuilt,
}

impl ControllerError {
    pub fn exit_code(&self) -> u8 {
        1
    }
}

pub async fn run(_args: ControllerArgs) -> Result<(), ControllerError> {
    Err(ControllerError::NotBuilt)
}
