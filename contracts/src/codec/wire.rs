//! The Confluent wire format: `[magic byte 0][schema id: u32 big-endian][Avro binary body]`.

use super::DecodeError;

/// The first byte of every Confluent-framed record.
pub const MAGIC_BYTE: u8 = 0;
/// Bytes taken by the schema id.
pub const SCHEMA_ID_LEN: usize = 4;
/// Bytes before the Avro body.
pub const HEADER_LEN: usize = 1 + SCHEMA_ID_LEN;

/// The header of a Confluent-framed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireHeader {
    /// Registry id of the writer's schema.
    pub schema_id: u32,
}

impl WireHeader {
    /// Splits a framed record into its header and Avro body, checking length and magic byte.
    pub fn parse(bytes: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::ShortHeader { len: bytes.len() });
        };
        let [magic, id @ ..] = *header;
        if magic != MAGIC_BYTE {
            return Err(DecodeError::BadMagic { found: magic });
        }
        Ok((Self { schema_id: u32::from_be_bytes(id) }, body))
    }

    /// Appends the header to `out`.
    pub fn write(self, out: &mut Vec<u8>) {
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&self.schema_id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut out = Vec::new();
        WireHeader { schema_id: 0x0102_0304 }.write(&mut out);
        out.extend_from_slice(b"body");
        assert_eq!(out[..HEADER_LEN], [0, 1, 2, 3, 4]);
        let (header, body) = WireHeader::parse(&out).expect("valid header");
        assert_eq!(header.schema_id, 0x0102_0304);
        assert_eq!(body, b"body");
    }

    #[test]
    fn short_and_bad_headers_are_typed_errors() {
        assert!(matches!(WireHeader::parse(&[]), Err(DecodeError::Empty)));
        assert!(matches!(WireHeader::parse(&[0, 0, 1]), Err(DecodeError::ShortHeader { len: 3 })));
        assert!(matches!(WireHeader::parse(&[7, 0, 0, 0, 1]), Err(DecodeError::BadMagic { found: 7 })));
        // A header alone is a valid frame with an empty body.
        assert!(WireHeader::parse(&[0, 0, 0, 0, 1]).is_ok());
    }
}
