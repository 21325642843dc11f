//! Closing the tree under the root to sessions without the cluster credential.
//!
//! A registry that anyone may write is an open door: a process that registers itself as a
//! service receives that service's calls. With a credential, the nodes a handle creates carry
//! its digest identity (everything) and `world:anyone` (read). Nodes left from an earlier
//! deployment without a credential, or made by someone else while the tree was open, are
//! fixed once at connect: a persistent node gets the cluster's ACL, an ephemeral node (a
//! registration or election candidate nobody with the credential made) is deleted.

use tracing::{info, warn};
use zookeeper_client as zk;

use super::session::Access;
use crate::discovery::DiscoveryError;

/// Levels below the root that hold nodes: `services/<service>/<instance>`,
/// `election/<name>/<candidate>`, `config/<name>`.
const DEPTH: usize = 3;
/// Nodes looked at, at most: a registry holds a few hundred; more means something else lives
/// under this root, which is then left as it is past this bound (and logged).
const MAX_NODES: usize = 10_000;

/// Makes sure every node from `root` down is the cluster's: creates the root with the
/// cluster's ACL when missing, then fixes what others may change.
///
/// # Errors
/// [`DiscoveryError::Backend`] when ZooKeeper fails, or when a node under the root is open to
/// others and this credential may not change it (someone else's ACL holds it).
pub(super) async fn close_tree(client: &zk::Client, root: &str) -> Result<(), DiscoveryError> {
    let fail = |what: String, err: zk::Error| DiscoveryError::backend_caused(what, err);
    let access = Access::Secured;
    match client.mkdir(root, &access.persistent()).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(err) => return Err(fail(format!("create {root}"), err)),
    }
    let ours = identity(client, root).await?;
    let mut level = vec![root.to_owned()];
    let mut seen = 0;
    for depth in 0..=DEPTH {
        let mut next = Vec::new();
        for path in level {
            seen += 1;
            if seen > MAX_NODES {
                warn!(
                    root,
                    "more nodes under the root than the registry uses; the rest left as they are"
                );
                return Ok(());
            }
            if !close_node(client, &path, &ours).await? || depth == DEPTH {
                continue;
            }
            let children = match client.list_children(&path).await {
                Ok(children) => children,
                Err(zk::Error::NoNode) => continue,
                Err(err) => return Err(fail(format!("list {path}"), err)),
            };
            next.extend(children.into_iter().map(|child| format!("{path}/{child}")));
        }
        level = next;
    }
    Ok(())
}

/// The digest identity this session's credential stands for, as ZooKeeper writes it in an
/// ACL: read back from a short-lived node created with the `auth` ACL.
async fn identity(client: &zk::Client, root: &str) -> Result<zk::AuthId, DiscoveryError> {
    let fail = |what: &str, err: zk::Error| DiscoveryError::backend_caused(what.to_owned(), err);
    let probe = format!("{root}/acl-probe-");
    let options = zk::CreateMode::EphemeralSequential.with_acls(Access::Secured.acls());
    let (_, sequence) = client
        .create(&probe, &[], &options)
        .await
        .map_err(|err| fail(&format!("create a node under {root}"), err))?;
    let path = format!("{probe}{sequence}");
    let acls = client.get_acl(&path).await.map(|(acls, _)| acls);
    let _ = client.delete(&path, None).await;
    let acls = acls.map_err(|err| fail(&format!("read the ACL of {path}"), err))?;
    acls.into_iter()
        .find(|acl| acl.scheme() == "digest")
        .map(|acl| acl.auth_id().clone())
        .ok_or_else(|| {
            DiscoveryError::Invalid("ZooKeeper kept no digest identity for the credential".into())
        })
}

/// Whether `acls` are the cluster's: change rights only for `ours`, read for anyone.
fn is_ours(acls: &[zk::Acl], ours: &zk::AuthId) -> bool {
    acls.iter()
        .all(|acl| acl.auth_id() == ours || acl.permission() == zk::Permission::READ)
}

/// Fixes one node; returns whether it is still there (and worth descending into).
async fn close_node(
    client: &zk::Client,
    path: &str,
    ours: &zk::AuthId,
) -> Result<bool, DiscoveryError> {
    let (acls, stat) = match client.get_acl(path).await {
        Ok(found) => found,
        Err(zk::Error::NoNode) => return Ok(false),
        Err(err) => {
            return Err(DiscoveryError::backend_caused(
                format!("read the ACL of {path}"),
                err,
            ));
        }
    };
    if is_ours(&acls, ours) {
        return Ok(true);
    }
    let result = if stat.ephemeral_owner != 0 {
        warn!(path, "deleting a node not made with the cluster credential");
        client.delete(path, None).await.map(|()| false)
    } else {
        info!(
            path,
            "closing a node others could change to the cluster credential"
        );
        let secured = Access::Secured.acls();
        let mut cluster: Vec<zk::Acl> = secured.to_vec();
        // `auth` is expanded by ZooKeeper on create only; set_acl takes explicit ids.
        cluster[0] = zk::Acl::new(zk::Permission::ALL, ours.clone());
        client.set_acl(path, &cluster, None).await.map(|_| true)
    };
    match result {
        Ok(kept) => Ok(kept),
        Err(zk::Error::NoNode) => Ok(false),
        Err(err) => Err(DiscoveryError::backend_caused(
            format!(
                "{path} may be changed by sessions without the cluster credential, and this credential cannot close it"
            ),
            err,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_digest_of_ours_and_read_for_others() {
        let ours = zk::AuthId::new("digest", "mpim:abc=");
        let theirs = zk::AuthId::new("digest", "evil:xyz=");
        let read = zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone());
        let mine = zk::Acl::new(zk::Permission::ALL, ours.clone());
        assert!(is_ours(&[mine.clone(), read.clone()], &ours));
        assert!(!is_ours(
            &[zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())],
            &ours
        ));
        assert!(!is_ours(
            &[mine, zk::Acl::new(zk::Permission::ALL, theirs)],
            &ours
        ));
        let write = zk::Acl::new(
            zk::Permission::READ | zk::Permission::WRITE,
            zk::AuthId::anyone(),
        );
        assert!(!is_ours(&[read, write], &ours));
    }
}
