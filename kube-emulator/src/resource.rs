//! The five resources the emulator serves, and their REST names.

use std::fmt;

/// A served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Resource {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    EndpointSlice,
}

impl Resource {
    pub(crate) const ALL: [Resource; 5] = [
        Resource::Namespace,
        Resource::Pod,
        Resource::Service,
        Resource::NetworkPolicy,
        Resource::EndpointSlice,
    ];

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Resource::Namespace => "Namespace",
            Resource::Pod => "Pod",
            Resource::Service => "Service",
            Resource::NetworkPolicy => "NetworkPolicy",
            Resource::EndpointSlice => "EndpointSlice",
        }
    }

    pub(crate) fn list_kind(self) -> &'static str {
        match self {
            Resource::Namespace => "NamespaceList",
            Resource::Pod => "PodList",
            Resource::Service => "ServiceList",
            Resource::NetworkPolicy => "NetworkPolicyList",
            Resource::EndpointSlice => "EndpointSliceList",
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Resource::Namespace => "namespaces",
            Resource::Pod => "pods",
            Resource::Service => "services",
            Resource::NetworkPolicy => "networkpolicies",
            Resource::EndpointSlice => "endpointslices",
        }
    }

    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Namespace => &["ns"],
            Resource::Pod => &["po"],
            Resource::Service => &["svc"],
            Resource::NetworkPolicy => &["netpol"],
            Resource::EndpointSlice => &[],
        }
    }

    /// The API group ("" for core).
    pub(crate) fn group(self) -> &'static str {
        match self {
            Resource::NetworkPolicy => "networking.k8s.io",
            Resource::EndpointSlice => "discovery.k8s.io",
            _ => "",
        }
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Resource::NetworkPolicy => "networking.k8s.io/v1",
            Resource::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Whether the resource has a `/status` subresource (EndpointSlices have none).
    pub(crate) fn has_status(self) -> bool {
        !matches!(self, Resource::EndpointSlice)
    }

    /// The API groups served besides core, in discovery order.
    pub(crate) const GROUPS: [&'static str; 2] = ["networking.k8s.io", "discovery.k8s.io"];

    /// The resources of one API group ("" for core).
    pub(crate) fn of_group(group: &str) -> Vec<Resource> {
        Resource::ALL
            .into_iter()
            .filter(|r| r.group() == group)
            .collect()
    }

    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Resource::Namespace)
    }

    /// `pods`, or `networkpolicies.networking.k8s.io`: how the real server names the resource
    /// in messages (`pods "x" not found`).
    pub(crate) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    /// Looks a resource up by Kind (`Pod`), plural (`pods`) or short name, case-insensitively.
    pub(crate) fn lookup(name: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| {
            r.kind().eq_ignore_ascii_case(name)
                || r.plural().eq_ignore_ascii_case(name)
                || r.short_names().iter().any(|s| s.eq_ignore_ascii_case(name))
        })
    }

    /// The resource of a REST path segment under a group version.
    pub(crate) fn from_path(group: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && r.plural() == plural)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}
