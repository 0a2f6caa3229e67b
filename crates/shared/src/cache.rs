//! placeholder
pub struct Cache;
pub struct Generation;
