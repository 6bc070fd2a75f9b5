//! HTTP/2 settings that servers and clients share, so that each side can use
//! them without depending on the other (the client library does not need the
//! server, nor the server the client).

/// HTTP/2 flow-control windows (bytes), for servers and clients alike.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 4 << 20;
