//! Certificates made at test time: a CA and certificates it signs.

use mprpc::tls::{ClientTls, Identity, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate with these `dNSName` and URI entries, as PEM (certificate, key).
    pub fn issue_pem(&self, dns_names: &[&str], uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        for uri in uris {
            let uri = (*uri).try_into().expect("an IA5 URI");
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    pub fn issue(&self, dns_names: &[&str], uris: &[&str]) -> Identity {
        let (cert, key) = self.issue_pem(dns_names, uris);
        Identity::from_pem(cert.as_bytes(), key.as_bytes()).expect("identity")
    }

    /// A server requiring client certificates of this CA, presenting `dns_names`.
    pub fn server(&self, dns_names: &[&str]) -> ServerTls {
        ServerTls::mutual(self.issue(dns_names, &[]), self.pem().as_bytes()).expect("server")
    }

    /// A client trusting this CA, presenting a certificate with `uri`.
    pub fn client(&self, uri: &str) -> ClientTls {
        ClientTls::new(self.pem().as_bytes())
            .expect("client")
            .identity(self.issue(&[], &[uri]))
            .expect("client identity")
    }
}
