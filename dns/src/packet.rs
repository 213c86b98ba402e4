//! One request packet answered in process, as the UDP server answers it (the `private.` zone
//! only; no upstream, so other names are REFUSED): for the fuzz target and tests, without sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use hickory_proto::ProtoError;
use hickory_proto::rr::{LowerName, Name, Record};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponse};

use crate::records::{RecordSet, ZONE};
use crate::zone::{PrivateZone, Shared};

/// Collects the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Collect {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let info = {
            let mut encoder = BinEncoder::new(&mut bytes);
            response
                .destructive_emit(&mut encoder)
                .map_err(|e: ProtoError| NetError::from(e))?
        };
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
        Ok(info)
    }
}

/// The response the server sends to `packet` over UDP when it serves `records`, or `None`
/// when it sends nothing (fewer than 12 bytes, or a message it cannot decode at all).
pub async fn answer_packet(records: RecordSet, ttl: u32, packet: &[u8]) -> Option<Vec<u8>> {
    let origin = Name::from_ascii(format!("{ZONE}.")).ok()?;
    let shared = Arc::new(Shared::new(records));
    let private = PrivateZone::new(origin.clone(), shared, ttl).ok()?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(private)]);
    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 5353));
    let request = Request::from_bytes(packet.to_vec(), src, Protocol::Udp).ok()?;
    let collect = Collect::default();
    catalog
        .handle_request::<_, TokioTime>(&request, collect.clone())
        .await;
    collect
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{RData, RecordType};

    use super::*;

    fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn answers_like_the_server() {
        let records = RecordSet::from_entries([(
            "cluster.web.web-web-1.private",
            vec![Ipv4Addr::new(10, 10, 1, 5)],
        )]);
        let bytes = answer_packet(
            records.clone(),
            5,
            &query(7, "cluster.web.web-web-1.private.", RecordType::A),
        )
        .await
        .expect("an answer");
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.metadata.id, 7);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            answer.answers[0].data,
            RData::A(Ipv4Addr::new(10, 10, 1, 5).into())
        );

        let bytes = answer_packet(
            records.clone(),
            5,
            &query(8, "nope.private.", RecordType::A),
        )
        .await
        .expect("an answer");
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

        // Outside private. there is no upstream here: refused.
        let bytes = answer_packet(records.clone(), 5, &query(9, "example.com.", RecordType::A))
            .await
            .expect("an answer");
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.metadata.response_code, ResponseCode::Refused);

        assert_eq!(answer_packet(records, 5, b"short").await, None);
    }
}
