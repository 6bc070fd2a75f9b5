//! The codec of the services this node serves: prost's, except that a
//! request that cannot be decoded is the caller's fault, answered with
//! `INVALID_ARGUMENT` and prost's description of what is wrong (which names
//! the field: `PublishRequest.text: invalid string value: data is not UTF-8
//! encoded`). tonic's own prost codec answers `INTERNAL`, as if the server
//! had failed.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec as TonicCodec, DecodeBuf, Decoder as TonicDecoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// `build.rs` names this as the servers' codec.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a malformed message is `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct Decoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> TonicDecoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message is one slice of tonic's buffer (always, as tonic
        // buffers it): prost then reads a plain slice, where each read
        // through `DecodeBuf` would also move the buffer's own offset.
        let len = buf.remaining();
        if buf.chunk().len() == len {
            let decoded = decode(buf.chunk());
            buf.advance(len);
            return decoded.map(Some);
        }
        decode(buf).map(Some)
    }
}

/// Decodes one request message of type `U` from `buf` as the servers do:
/// a malformed message is `INVALID_ARGUMENT` ([`invalid`]). Also what the
/// fuzz targets (`fuzz/`) feed arbitrary bytes to.
pub fn decode<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| invalid(&e))
}

/// The status for a request prost could not decode.
pub fn invalid(error: &prost::DecodeError) -> Status {
    Status::invalid_argument(error.to_string())
}
