//! Who is where: users grouped by the gateways their routes name, for the one stream entry
//! or event per gateway that a message or an event becomes.

use std::collections::{BTreeMap, HashMap};

use crate::proto::Route;

/// Each user's gateways (each once) from `routes`.
pub fn gateways_by_user(routes: impl IntoIterator<Item = Route>) -> HashMap<u64, Vec<String>> {
    let mut gateways_of: HashMap<u64, Vec<String>> = HashMap::new();
    for route in routes {
        let gateways = gateways_of.entry(route.user_id).or_default();
        if !gateways.contains(&route.gateway_id) {
            gateways.push(route.gateway_id);
        }
    }
    gateways_of
}

/// `users` (no user twice) grouped by the gateways that hold them, in gateway order and
/// in the order of `users`; users with no gateway are left out.
pub fn by_gateway(
    users: impl IntoIterator<Item = u64>,
    gateways_of: &HashMap<u64, Vec<String>>,
) -> BTreeMap<&str, Vec<u64>> {
    let mut by_gateway: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for user in users {
        for gateway in gateways_of.get(&user).into_iter().flatten() {
            let held = by_gateway.entry(gateway).or_default();
            if held.last() != Some(&user) {
                held.push(user);
            }
        }
    }
    by_gateway
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(user: u64, device: &str, gateway: &str) -> Route {
        Route {
            user_id: user,
            device_id: device.to_owned(),
            device_kind: 0,
            gateway_id: gateway.to_owned(),
        }
    }

    #[test]
    fn users_by_the_gateways_holding_them() {
        let gateways_of = gateways_by_user([
            route(1, "phone", "gw-b"),
            route(1, "laptop", "gw-b"),
            route(1, "tablet", "gw-a"),
            route(2, "phone", "gw-a"),
        ]);
        assert_eq!(gateways_of[&1], ["gw-b", "gw-a"]);
        let grouped = by_gateway([1, 2, 3], &gateways_of);
        let grouped: Vec<(&str, Vec<u64>)> = grouped.into_iter().collect();
        assert_eq!(grouped, [("gw-a", vec![1, 2]), ("gw-b", vec![1])]);
    }
}
