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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::records::tests::{cluster, service};
    use crate::dns::server::{encode_udp, udp_limit};
    use hickory_proto::op::Query;

    fn ask(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    /// Answers `req` after a round trip through the wire format, as a client would see it.
    fn answer(t: &Table, req: &Message) -> Message {
        let wire = Message::from_vec(&req.to_vec().unwrap()).unwrap();
        match respond(t, &wire) {
            Outcome::Reply(m) => Message::from_vec(&m.to_vec().unwrap()).unwrap(),
            Outcome::Forward => panic!("{req:?} was forwarded"),
        }
    }

    fn data(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn service_a_is_authoritative_with_ttl_and_echoed_question() {
        let t = cluster();
        let req = ask("web.default.svc.cluster.local.", RecordType::A);
        let m = answer(&t, &req);
        assert_eq!(m.metadata.id, req.metadata.id);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries, req.queries);
        assert_eq!(data(&m), ["10.96.0.20"]);
        assert_eq!(m.answers[0].ttl, 30);
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
    }

    #[test]
    fn search_path_sequence_like_a_pod_resolver() {
        let t = cluster();
        // `nslookup kubernetes.default` in namespace default, ndots:5.
        let seq = [
            (
                "kubernetes.default.default.svc.cluster.local.",
                ResponseCode::NXDomain,
            ),
            (
                "kubernetes.default.svc.cluster.local.",
                ResponseCode::NoError,
            ),
        ];
        for (name, code) in seq {
            let m = answer(&t, &ask(name, RecordType::A));
            assert_eq!(m.metadata.response_code, code, "{name}");
        }
        // `nslookup web`: the first search domain hits.
        let m = answer(&t, &ask("web.default.svc.cluster.local.", RecordType::A));
        assert_eq!(data(&m), ["10.96.0.20"]);
    }

    #[test]
    fn headless_returns_pod_ips() {
        let m = answer(
            &cluster(),
            &ask("db.prod.svc.cluster.local.", RecordType::A),
        );
        let mut d = data(&m);
        d.sort();
        assert_eq!(d, ["10.244.1.5", "10.244.2.6"]);
        let m = answer(
            &cluster(),
            &ask("db-0.db.prod.svc.cluster.local.", RecordType::A),
        );
        assert_eq!(data(&m), ["10.244.1.5"]);
    }

    #[test]
    fn srv_with_target_addresses_in_additional() {
        let m = answer(
            &cluster(),
            &ask("_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV),
        );
        assert_eq!(m.answers.len(), 2);
        let mut extra: Vec<String> = m
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        extra.sort();
        assert_eq!(
            extra,
            [
                "10-244-2-6.db.prod.svc.cluster.local. 10.244.2.6",
                "db-0.db.prod.svc.cluster.local. 10.244.1.5"
            ]
        );
    }

    #[test]
    fn ptr_and_pod_a() {
        let t = cluster();
        let m = answer(&t, &ask("20.0.96.10.in-addr.arpa.", RecordType::PTR));
        assert_eq!(data(&m), ["web.default.svc.cluster.local."]);
        let m = answer(
            &t,
            &ask("10-244-1-9.default.pod.cluster.local.", RecordType::A),
        );
        assert_eq!(data(&m), ["10.244.1.9"]);
    }

    #[test]
    fn nxdomain_and_nodata_carry_the_soa() {
        let t = cluster();
        let nx = answer(&t, &ask("nope.default.svc.cluster.local.", RecordType::A));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty() && nx.metadata.authoritative);
        assert_eq!(nx.authorities.len(), 1);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(nx.authorities[0].name.to_ascii(), "cluster.local.");

        let nodata = answer(&t, &ask("web.default.svc.cluster.local.", RecordType::AAAA));
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);

        let apex = answer(&t, &ask("cluster.local.", RecordType::SOA));
        assert_eq!(apex.answers.len(), 1);
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn case_insensitive_and_case_preserving() {
        let m = answer(
            &cluster(),
            &ask("WeB.DeFault.SVC.cluster.LOCAL.", RecordType::A),
        );
        assert_eq!(data(&m), ["10.96.0.20"]);
        // The owner name keeps the asker's case (resolvers using 0x20 mixing check it).
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "WeB.DeFault.SVC.cluster.LOCAL."
        );
    }

    #[test]
    fn outside_names_are_forwarded_and_bad_requests_refused() {
        let t = cluster();
        let out = respond(&t, &ask("example.org.", RecordType::A));
        assert!(matches!(out, Outcome::Forward));
        let out = respond(&t, &ask("9.9.9.9.in-addr.arpa.", RecordType::PTR));
        assert!(matches!(out, Outcome::Forward));

        let code = |m: &Message| match respond(&t, m) {
            Outcome::Reply(r) => r.metadata.response_code,
            Outcome::Forward => panic!("forwarded"),
        };
        let mut two = ask("web.default.svc.cluster.local.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("db.prod.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(code(&two), ResponseCode::FormErr);
        let mut none = ask("web.default.svc.cluster.local.", RecordType::A);
        none.queries.clear();
        assert_eq!(code(&none), ResponseCode::FormErr);
        let mut notify = ask("web.default.svc.cluster.local.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        assert_eq!(code(&notify), ResponseCode::NotImp);
        assert_eq!(
            code(&ask("cluster.local.", RecordType::AXFR)),
            ResponseCode::Refused
        );
        let unsynced = Table::unsynced("cluster.local").unwrap();
        match respond(
            &unsynced,
            &ask("web.default.svc.cluster.local.", RecordType::A),
        ) {
            Outcome::Reply(r) => assert_eq!(r.metadata.response_code, ResponseCode::ServFail),
            Outcome::Forward => panic!("forwarded"),
        }
    }

    #[test]
    fn edns_is_answered_with_our_payload_size() {
        let mut req = ask("web.default.svc.cluster.local.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        req.edns = Some(edns);
        let m = answer(&cluster(), &req);
        assert_eq!(
            m.edns.as_ref().map(|e| e.max_payload()),
            Some(MAX_UDP_PAYLOAD)
        );
        assert_eq!(udp_limit(&req), usize::from(MAX_UDP_PAYLOAD));
        assert_eq!(udp_limit(&ask("x.", RecordType::A)), 512);
    }

    /// A headless service with 60 ready endpoints: its A answer is over 512 bytes.
    fn big_headless() -> Table {
        let svc = service("default", "big", "None", serde_json::json!([]));
        let eps: Vec<(String, Option<bool>, Option<&str>)> = (0..60)
            .map(|i| (format!("10.244.3.{i}"), Some(true), None))
            .collect();
        let eps: Vec<(&str, Option<bool>, Option<&str>)> =
            eps.iter().map(|(ip, r, h)| (ip.as_str(), *r, *h)).collect();
        let slice =
            crate::dns::records::tests::slice("default", "big", &eps, serde_json::json!([]));
        Table::build("cluster.local", &[&svc], &[&slice], &[]).unwrap()
    }

    #[test]
    fn truncation_over_512_bytes_and_over_the_edns_size() {
        let t = big_headless();
        let req = ask("big.default.svc.cluster.local.", RecordType::A);
        let Outcome::Reply(resp) = respond(&t, &req) else {
            panic!("forwarded")
        };
        let full = resp.to_vec().unwrap();
        assert!(full.len() > 512, "{} bytes", full.len());

        let udp = Message::from_vec(&encode_udp(&resp, udp_limit(&req)).unwrap()).unwrap();
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        assert_eq!(udp.metadata.id, req.metadata.id);
        assert_eq!(udp.queries, req.queries);

        // With EDNS 1232 the same answer fits and is whole.
        let mut big = req.clone();
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        big.edns = Some(edns);
        let Outcome::Reply(resp) = respond(&t, &big) else {
            panic!("forwarded")
        };
        let udp = Message::from_vec(&encode_udp(&resp, udp_limit(&big)).unwrap()).unwrap();
        assert!(!udp.metadata.truncation);
        assert_eq!(udp.answers.len(), 60);
    }
}
