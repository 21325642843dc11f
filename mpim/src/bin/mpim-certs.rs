//! `mpim-certs`: the cluster CA and one certificate per role, for mutual TLS between MPIM's
//! processes (docs/security.md).
//!
//! ```text
//! mpim-certs --dir /etc/mpim/certs            # CA if missing, and every role missing
//! mpim-certs --dir /etc/mpim/certs --renew    # every role again (rotation)
//! mpim-certs --dir certs --roles gateway --renew
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use im_common::certs;
use im_common::identity::Role;

#[derive(Debug, Parser)]
#[command(about = "Make the MPIM cluster CA and role certificates (mutual TLS)")]
struct Args {
    /// Directory of ca.pem, ca.key and ROLE.pem, ROLE.key for each role.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Roles to issue: gateway, user, presence, message, group (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gateway,user,presence,message,group"
    )]
    roles: Vec<String>,
    /// Issue again roles that have a certificate already (rotation).
    #[arg(long)]
    renew: bool,
    /// Days a role certificate is valid.
    #[arg(long, default_value_t = certs::DEFAULT_DAYS)]
    days: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let roles = args
        .roles
        .iter()
        .map(|name| {
            Role::from_name(name).with_context(|| {
                format!("--roles: unknown role {name:?} (gateway, user, presence, message, group)")
            })
        })
        .collect::<anyhow::Result<Vec<Role>>>()?;
    if args.days == 0 {
        anyhow::bail!("--days: must be at least 1");
    }
    if certs::ensure_ca(&args.dir)? {
        println!("made the cluster CA: {}", args.dir.join("ca.pem").display());
    }
    for role in roles {
        let (cert, _) = certs::files(&args.dir, role);
        if cert.exists() && !args.renew {
            continue;
        }
        certs::issue(&args.dir, role, args.days)?;
        println!(
            "issued {} ({}): {}",
            role,
            role.certificate_name(),
            cert.display()
        );
    }
    Ok(())
}
