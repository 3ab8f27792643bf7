//! The wire contract as OpenAPI schemas, built from the parser's own types: each event type's
//! `props` is the schema of the struct its props are parsed into, `context` and `consent` those
//! of [`Context`] and [`Consent`], and the error object's `code` lists [`Code::ALL`]. The server
//! assembles these into its OpenAPI document (`GET /v1/openapi.json`).

use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::{
    signal_range, ClickP, Code, Consent, Context, ConversionP, EventType, ImpressionP, MotionState,
    MouseP, PageViewP, Phase, PhaseP, ScrollP, SignalKind, VisibilityP,
};

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn obj(b: ObjectBuilder) -> RefOr<Schema> {
    RefOr::T(Schema::Object(b.build()))
}

/// `props` of a `custom` event: `name`, plus up to `limits.max_custom_props` scalar fields.
fn custom_props() -> RefOr<Schema> {
    let scalar = OneOfBuilder::new()
        .item(obj(string()))
        .item(obj(ObjectBuilder::new().schema_type(Type::Number)))
        .item(obj(ObjectBuilder::new().schema_type(Type::Boolean)))
        .build();
    obj(ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("name", string())
        .required("name")
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::OneOf(
            scalar,
        )))))
        .description(Some(
            "the event's name, and string, number or boolean fields",
        )))
}

/// The schema of `props` for an event type, and its component name.
fn props_of(t: EventType) -> (String, RefOr<Schema>) {
    match t {
        EventType::PageView => (PageViewP::name().into(), PageViewP::schema()),
        EventType::Scroll => (ScrollP::name().into(), ScrollP::schema()),
        EventType::Hover | EventType::Dwell => (PhaseP::name().into(), PhaseP::schema()),
        EventType::Click => (ClickP::name().into(), ClickP::schema()),
        EventType::Impression => (ImpressionP::name().into(), ImpressionP::schema()),
        EventType::Conversion => (ConversionP::name().into(), ConversionP::schema()),
        EventType::Mouse => (MouseP::name().into(), MouseP::schema()),
        EventType::Visibility => (VisibilityP::name().into(), VisibilityP::schema()),
        EventType::Custom => ("CustomProps".into(), custom_props()),
        EventType::Signal => ("SignalProps".into(), signal_props()),
    }
}

/// `SignalProps`: one object per signal kind, with only the fields that kind takes (the
/// parser's [`SignalKind::fields`]) and only its `via` values — so that a document-valid
/// signal is one the server accepts.
fn signal_props() -> RefOr<Schema> {
    use serde_json::json;
    // Integers and numbers within the parser's own ranges (`signal_range`).
    let integer = |f: &str, description: &str| {
        let (lo, hi) = signal_range(f);
        json!({"type": "integer", "minimum": lo as u64, "maximum": hi as u64, "description": description})
    };
    let number = |f: &str, description: &str| {
        let (lo, hi) = signal_range(f);
        json!({"type": "number", "minimum": lo, "maximum": hi, "description": description})
    };
    let field = |k: SignalKind, f: &str| match f {
        "count" => integer(
            f,
            "rage_click: clicks in the burst; excessive_scroll: scroll reversals",
        ),
        "duration_ms" => integer(
            f,
            "hesitation: how long; quick_back: time on the page left; \
                engagement: engaged time since the last report; rage_click: the burst's span",
        ),
        "via" => {
            let vias: Vec<&str> = k.vias().iter().map(|v| v.as_str()).collect();
            json!({"type": "string", "enum": vias})
        }
        "wpm" => number(f, "words per minute"),
        "state" => json!({"type": "string", "enum": MotionState::ALL.map(MotionState::as_str)}),
        "tilt" => number(f, "front-back tilt in degrees, 0 (flat) to 180"),
        _ => unreachable!("a signal field without a schema: {f}"),
    };
    let one_of: Vec<serde_json::Value> = SignalKind::ALL
        .iter()
        .map(|&k| {
            let mut properties = serde_json::Map::new();
            properties.insert(
                "kind".into(),
                json!({"type": "string", "enum": [k.as_str()]}),
            );
            let mut required = vec![serde_json::Value::from("kind")];
            for (f, need) in k.fields() {
                properties.insert((*f).into(), field(k, f));
                if *need {
                    required.push((*f).into());
                }
            }
            json!({"type": "object", "title": k.as_str(), "properties": properties,
                "required": required, "additionalProperties": false})
        })
        .collect();
    let v = json!({"oneOf": one_of,
        "description": "a behavioural signal; `kind` says which fields apply"});
    serde_json::from_value(v).expect("signal schemas deserialise")
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// One event as a client sends it, one variant per type (`type` says which `props` apply).
fn event() -> RefOr<Schema> {
    let mut one_of = OneOfBuilder::new();
    for t in EventType::ALL {
        let (props, _) = props_of(t);
        let b = ObjectBuilder::new()
            .schema_type(Type::Object)
            .title(Some(t.as_str()))
            .property(
                "id",
                string()
                    .max_length(Some(64))
                    .description(Some("unique per user, at most 64 bytes; a resent event keeps its id")),
            )
            .required("id")
            .property("type", string().enum_values(Some([t.as_str()])))
            .required("type")
            .property(
                "user",
                string().description(Some("the site's user id: required with the write key, optional with a user token (must be its user)")),
            )
            .property("session", string())
            .required("session")
            .property(
                "ts",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .description(Some("client time, ms since the Unix epoch")),
            )
            .required("ts")
            .property("target", string().description(Some("the element (hover, dwell, click)")))
            .property("props", reference(&props))
            .property("context", reference(&Context::name()))
            .property("consent", reference(&Consent::name()))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        one_of = one_of.item(obj(b));
    }
    RefOr::T(Schema::OneOf(one_of.build()))
}

/// The error object every error answer carries (HTTP: `{"error": …}`).
fn error_object() -> RefOr<Schema> {
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    obj(ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "code",
            string()
                .enum_values(Some(codes))
                .description(Some("stable; see the README's error table")),
        )
        .required("code")
        .property("message", string())
        .required("message")
        .property(
            "path",
            string().description(Some("the offending field, e.g. events[3].props.depth")),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false))))
}

/// Every string the parser checks is 1..=`limits.max_string_len` characters (256 by default)
/// without control characters: said once here for every string of the event's schemas.
const TEXT_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// `schema` with every string (not an enum) constrained as the parser checks strings.
pub fn constrain_strings(schema: RefOr<Schema>) -> RefOr<Schema> {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let is_string = match m.get("type") {
                    Some(serde_json::Value::String(t)) => t == "string",
                    Some(serde_json::Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                    _ => false,
                };
                if is_string && !m.contains_key("enum") {
                    let max = crate::Limits::default().max_string_len;
                    m.entry("minLength").or_insert(1.into());
                    m.entry("maxLength").or_insert(max.into());
                    m.entry("pattern").or_insert(TEXT_PATTERN.into());
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(&schema).expect("a schema serialises");
    walk(&mut v);
    serde_json::from_value(v).expect("a constrained schema deserialises")
}

/// Every schema of the wire contract, by component name: `Event`, `EventBatch`, `Error`,
/// `ErrorBody`, and the props, context and consent schemas they refer to.
pub fn components() -> Vec<(String, RefOr<Schema>)> {
    let mut out: Vec<(String, RefOr<Schema>)> = Vec::new();
    for t in EventType::ALL {
        let (name, schema) = props_of(t);
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, schema));
        }
    }
    out.push((Context::name().into(), Context::schema()));
    for (name, schema) in out.iter_mut() {
        if name != "CustomProps" {
            *schema = constrain_strings(schema.clone());
        }
    }
    out.push((Consent::name().into(), Consent::schema()));
    out.push((Phase::name().into(), Phase::schema()));
    out.push((EventType::name().into(), EventType::schema()));
    out.push(("Event".into(), constrain_strings(event())));
    out.push((
        "EventBatch".into(),
        obj(ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "events",
                RefOr::T(Schema::Array(
                    ArrayBuilder::new().items(reference("Event")).build(),
                )),
            )
            .required("events")
            .property(
                "token",
                string().description(Some("a user token in the body, for navigator.sendBeacon")),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))),
    ));
    out.push(("Error".into(), error_object()));
    out.push((
        "ErrorBody".into(),
        obj(ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("error", reference("Error"))
            .required("error")),
    ));
    out
}

/// Names the `EventBatch` component in path definitions (`request_body = EventBatch`).
pub struct EventBatch;
/// Names the `ErrorBody` component in path definitions (`body = ErrorBody`).
pub struct ErrorBody;

fn component(name: &str) -> RefOr<Schema> {
    components()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .expect("a wire component")
}

impl PartialSchema for EventBatch {
    fn schema() -> RefOr<Schema> {
        component("EventBatch")
    }
}
impl ToSchema for EventBatch {
    fn name() -> std::borrow::Cow<'static, str> {
        "EventBatch".into()
    }
}
impl PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        component("ErrorBody")
    }
}
impl ToSchema for ErrorBody {
    fn name() -> std::borrow::Cow<'static, str> {
        "ErrorBody".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_kind_documents_exactly_the_fields_the_parser_takes() {
        let all = components();
        let (_, schema) = all.iter().find(|(n, _)| n == "SignalProps").unwrap();
        let json = serde_json::to_value(schema).unwrap();
        let kinds = json["oneOf"].as_array().unwrap();
        assert_eq!(kinds.len(), SignalKind::ALL.len());
        for (v, k) in kinds.iter().zip(SignalKind::ALL) {
            assert_eq!(v["properties"]["kind"]["enum"][0], k.as_str());
            let mut names: Vec<&str> = v["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            names.sort();
            let mut want: Vec<&str> = k.fields().iter().map(|(f, _)| *f).collect();
            want.push("kind");
            want.sort();
            assert_eq!(names, want, "{}", k.as_str());
            assert_eq!(v["additionalProperties"], false);
            // No reference to a component that is not there: every schema is inline.
            assert!(!v.to_string().contains("$ref"), "{v}");
        }
        let hes = &kinds[3];
        assert_eq!(
            hes["properties"]["via"]["enum"],
            serde_json::json!(["hover", "idle"])
        );
        assert_eq!(
            hes["required"],
            serde_json::json!(["kind", "duration_ms", "via"])
        );
    }

    #[test]
    fn every_event_type_has_its_props_and_the_error_codes_are_the_table() {
        let all = components();
        let json = serde_json::to_value(
            all.iter()
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap();
        let variants = json["Event"]["oneOf"].as_array().unwrap();
        assert_eq!(variants.len(), EventType::ALL.len());
        for (v, t) in variants.iter().zip(EventType::ALL) {
            assert_eq!(v["properties"]["type"]["enum"][0], t.as_str());
            let props = v["properties"]["props"]["$ref"].as_str().unwrap();
            let name = props.rsplit('/').next().unwrap();
            assert!(json[name].is_object(), "{name} is not a component");
        }
        // The scroll props are the parser's: depth required, the rest optional.
        assert_eq!(
            json["ScrollProps"]["required"],
            serde_json::json!(["depth"])
        );
        let codes = json["Error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap();
        assert_eq!(codes.len(), Code::ALL.len());
    }
}
