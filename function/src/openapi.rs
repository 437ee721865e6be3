//! The published contract: an OpenAPI 3.1 document of every route, parameter, body, status and
//! error code, served at `GET /research/openapi.json` and written out by `taskstore export`.
//!
//! The document is hand-written JSON (`function/openapi.json`), compiled in verbatim. It is
//! the single description clients see, and tests hold it to the function's own tables, both
//! ways: every error code of [`crate::error::ERROR_TABLE`] is documented under its status and
//! every documented code is in the table; every path and method of [`crate::request::ROUTES`]
//! is documented and every documented operation is routed; and every response the function
//! gives in the service tests is one the document lists for that operation.

/// The OpenAPI 3.1 document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::error::{ErrorCode, ERROR_TABLE};
    use crate::request::{route, Method, ROUTES};

    pub(crate) fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// `#/components/<kind>/<name>` → the component it names.
    fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str() {
            Some(pointer) => document
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => value,
        }
    }

    pub(crate) const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every documented operation: (path template, method in upper case, operation).
    pub(crate) fn operations(document: &Value) -> Vec<(String, String, Value)> {
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    operations.push((path.clone(), method.to_uppercase(), operation.clone()));
                }
            }
        }
        operations
    }

    /// The error codes a response documents: the `enum` (or `const`) of its `error.code`.
    fn documented_codes(document: &Value, response: &Value) -> BTreeSet<String> {
        let schema = resolve(document, &response["content"]["application/json"]["schema"]);
        let mut codes = BTreeSet::new();
        collect_codes(document, schema, &mut codes);
        codes
    }

    fn collect_codes(document: &Value, schema: &Value, codes: &mut BTreeSet<String>) {
        let schema = resolve(document, schema);
        let code = &schema["properties"]["error"]["properties"]["code"];
        if let Some(values) = code["enum"].as_array() {
            codes.extend(
                values
                    .iter()
                    .map(|v| v.as_str().expect("codes are strings").into()),
            );
        }
        if let Some(value) = code["const"].as_str() {
            codes.insert(value.into());
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            collect_codes(document, part, codes);
        }
    }

    /// The documented response of `operation` for `status`, resolved.
    pub(crate) fn response<'a>(
        document: &'a Value,
        operation: &'a Value,
        status: u16,
    ) -> Option<&'a Value> {
        operation["responses"]
            .get(status.to_string())
            .map(|response| resolve(document, response))
    }

    /// Whether the document lets `operation` answer `status` with error `code`.
    pub(crate) fn documents_error(
        document: &Value,
        operation: &Value,
        status: u16,
        code: &str,
    ) -> bool {
        response(document, operation, status)
            .is_some_and(|response| documented_codes(document, response).contains(code))
    }

    fn strings(value: &Value) -> BTreeSet<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_version() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
        let bearer = &document["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(
            (&bearer["type"], &bearer["scheme"]),
            (&"http".into(), &"bearer".into())
        );
    }

    /// Both ways: each code of the error table is listed, under its own status only, by the
    /// response component its status uses; each code a component lists as the function's is
    /// in the table; and the schema's `enum` is exactly those plus the host's.
    #[test]
    fn the_error_table_and_the_document_list_the_same_codes_under_the_same_statuses() {
        let document = document();
        let table: BTreeMap<&str, ErrorCode> =
            ERROR_TABLE.iter().map(|row| (row.code, *row)).collect();
        assert_eq!(table.len(), ERROR_TABLE.len(), "codes are unique");
        let mut documented = BTreeMap::new();
        for (name, component) in document["components"]["responses"].as_object().unwrap() {
            let own = strings(&component["x-error-codes"]);
            let host = strings(&component["x-host-error-codes"]);
            assert_eq!(
                documented_codes(&document, component),
                own.union(&host).cloned().collect(),
                "{name}: the schema's codes are the function's and the host's"
            );
            for code in own {
                let row = table
                    .get(code.as_str())
                    .unwrap_or_else(|| panic!("{name} documents {code}, not in ERROR_TABLE"));
                assert!(
                    documented.insert(code.clone(), name.clone()).is_none(),
                    "{code} is documented twice"
                );
                if row.retry_after {
                    assert!(
                        component["headers"].get("Retry-After").is_some(),
                        "{name} must document Retry-After for {code}"
                    );
                }
                // The component is used under the row's status, and no other.
                for (path, method, operation) in operations(&document) {
                    for (status, value) in operation["responses"].as_object().unwrap() {
                        if value["$ref"] == format!("#/components/responses/{name}") {
                            assert_eq!(
                                status,
                                &row.status.to_string(),
                                "{method} {path}: {name} ({code}) under the wrong status"
                            );
                        }
                    }
                }
            }
        }
        let table_codes: BTreeSet<String> = table.keys().map(|code| code.to_string()).collect();
        let documented_codes: BTreeSet<String> = documented.keys().cloned().collect();
        assert_eq!(table_codes, documented_codes);
        let allow = &document["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"];
        assert_eq!(allow["required"], true);
    }

    /// Both ways: the document's paths and methods are [`ROUTES`]' (the function's `Allow`
    /// lists), and the router answers every documented operation and refuses, with that
    /// `Allow`, every other method.
    #[test]
    fn the_routes_and_the_document_have_the_same_paths_and_methods() {
        let document = document();
        let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, method, _) in operations(&document) {
            documented.entry(path).or_default().insert(method);
        }
        let routed: BTreeMap<String, BTreeSet<String>> = ROUTES
            .iter()
            .map(|(path, allow)| {
                let methods = allow.split(", ").map(str::to_string).collect();
                (path.to_string(), methods)
            })
            .collect();
        assert_eq!(documented, routed);
        for (template, allow) in ROUTES {
            let path = template.replace("{id}", "a%2Fb");
            for method in METHODS {
                let method = method.to_uppercase();
                let parsed = match method.as_str() {
                    "GET" => Method::Get,
                    "POST" => Method::Post,
                    "PATCH" => Method::Patch,
                    "DELETE" => Method::Delete,
                    other => Method::Other(other.to_string()),
                };
                let routed = route(&parsed, Some(&path));
                if documented[*template].contains(&method) {
                    assert!(routed.is_ok(), "{method} {path}: {routed:?}");
                } else {
                    let err = routed.expect_err(&format!("{method} {path} is not documented"));
                    assert_eq!(
                        (err.status, err.allow),
                        (405, Some(*allow)),
                        "{method} {path}"
                    );
                }
            }
        }
    }

    /// Every operation id the links name exists, and so does every parameter they fill.
    #[test]
    fn links_name_operations_and_parameters_that_exist() {
        let document = document();
        let operations = operations(&document);
        let mut links = 0;
        for (path, method, operation) in &operations {
            for response in operation["responses"].as_object().unwrap().values() {
                let response = resolve(&document, response);
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    links += 1;
                    let target = operations
                        .iter()
                        .find(|(_, _, op)| op["operationId"] == link["operationId"])
                        .unwrap_or_else(|| panic!("{method} {path}: link {name} names nothing"));
                    let item = &document["paths"][target.0.as_str()];
                    let parameters: Vec<&Value> = item["parameters"]
                        .as_array()
                        .into_iter()
                        .chain(target.2["parameters"].as_array())
                        .flatten()
                        .collect();
                    for parameter in link["parameters"].as_object().unwrap().keys() {
                        assert!(
                            parameters.iter().any(|p| p["name"] == parameter.as_str()),
                            "{method} {path}: link {name} fills unknown {parameter}"
                        );
                    }
                }
            }
        }
        assert!(links >= 8, "create → get → patch → list → delete is linked");
    }
}
