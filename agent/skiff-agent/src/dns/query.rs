//! One DNS question against the table: the response message, or "forward this upstream".
//! Sockets, sizes and forwarding are the server's business; this is pure.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::records::{Lookup, Table, TTL};

/// The largest UDP payload we offer through EDNS (the 2020 DNS flag day value: fits any MTU
/// without IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

#[derive(Debug)]
pub enum Outcome {
    Reply(Box<Message>),
    /// A name outside the cluster: send the query, unchanged, to an upstream resolver.
    Forward,
}

/// Answers `req` from `table`.
pub fn respond(table: &Table, req: &Message) -> Outcome {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        resp.edns = Some(edns);
    }
    if req.metadata.message_type != MessageType::Query {
        return reply(resp, ResponseCode::FormErr);
    }
    if req.metadata.op_code != OpCode::Query {
        return reply(resp, ResponseCode::NotImp);
    }
    let [q] = req.queries.as_slice() else {
        return reply(resp, ResponseCode::FormErr);
    };
    let qname = q.name().to_ascii();
    let ours = table.in_domain(&qname);
    if q.query_class() != DNSClass::IN {
        return if ours {
            reply(resp, ResponseCode::Refused)
        } else {
            Outcome::Forward
        };
    }
    let qtype = q.query_type();
    if ours && matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return reply(resp, ResponseCode::Refused);
    }
    let at_apex = q.name().to_lowercase() == table.origin().to_lowercase();
    match table.lookup(&qname, qtype) {
        Lookup::NotOurs => Outcome::Forward,
        Lookup::NotReady => reply(resp, ResponseCode::ServFail),
        Lookup::NxDomain => {
            resp.metadata.authoritative = true;
            resp.authorities.push(soa(table));
            reply(resp, ResponseCode::NXDomain)
        }
        Lookup::NoData if at_apex && matches!(qtype, RecordType::SOA) => {
            resp.metadata.authoritative = true;
            resp.answers.push(soa(table));
            reply(resp, ResponseCode::NoError)
        }
        Lookup::NoData => {
            resp.metadata.authoritative = true;
            resp.authorities.push(soa(table));
            reply(resp, ResponseCode::NoError)
        }
        Lookup::Records(records) => {
            resp.metadata.authoritative = true;
            for r in &records {
                resp.answers
                    .push(Record::from_rdata(q.name().clone(), TTL, (*r).clone()));
            }
            // SRV targets' addresses save the client a round trip, as CoreDNS does.
            for r in &records {
                if let RData::SRV(srv) = r {
                    let target = srv.target.to_ascii();
                    for t in [RecordType::A, RecordType::AAAA] {
                        for addr in table.records_of(&target, t) {
                            resp.additionals.push(Record::from_rdata(
                                srv.target.clone(),
                                TTL,
                                addr.clone(),
                            ));
                        }
                    }
                }
            }
            reply(resp, ResponseCode::NoError)
        }
    }
}

/// A reply to a message that could not be parsed past its header: FORMERR with its id.
pub fn format_error(id: u16) -> Message {
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
}

fn reply(mut resp: Message, code: ResponseCode) -> Outcome {
    resp.metadata.response_code = code;
    Outcome::Reply(Box::new(resp))
}

/// The zone's SOA, in the authority section of negative answers so that resolvers cache them
/// for its minimum TTL (RFC 2308).
fn soa(table: &Table) -> Record {
    let origin = table.origin().clone();
    let label = |l: &str| {
        Name::from_ascii(l)
            .and_then(|n| n.append_domain(&origin))
            .unwrap_or_else(|_| origin.clone())
    };
    Record::from_rdata(
        origin.clone(),
        TTL,
        RData::SOA(SOA::new(
            label("ns.dns"),
            label("hostmaster"),
            table.serial(),
            7200,
            1800,
            86400,
            TTL,
        )),
    )
}
