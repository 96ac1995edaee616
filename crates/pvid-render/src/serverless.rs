//! Serverless: the platform's IAM is the only gate in front of a function, so the preview's
//! isolation is rendered as IAM documents.
//!
//! - **AWS Lambda** (`aws/<svc>/`): per function `pvid-<id>-<svc>`, a role (trust policy for
//!   Lambda, tags naming the preview and service) whose policy lets it invoke exactly its
//!   callees, and only through their function URLs (`AuthType: AWS_IAM`; since October 2025 a URL
//!   invoke needs both `lambda:InvokeFunctionUrl` and `lambda:InvokeFunction`, the latter limited
//!   here to URL invokes by `lambda:InvokedViaFunctionUrl`). A direct `Invoke` through the Lambda
//!   API skips the HTTP layer, and with it any pvid token check, so every role carries an
//!   explicit Deny of direct invokes of the preview's functions.
//! - **Cloud Run** (`cloudrun/<svc>/`): a service account per service and, per service, an IAM
//!   policy binding `roles/run.invoker` to exactly its callers' service accounts.
//!
//! IAM cannot match methods or paths: a call restricted to `POST /charge` is rendered as the
//! service-to-service edge, with a warning that the function must check the rest itself.

use pvid_core::ServiceName;
use serde_json::{Value, json};

use crate::doc::{file, json as json_text};
use crate::model::{Plan, call_text};
use crate::{RenderError, Rendered};

/// Lambda function and IAM role names are at most 64 characters.
const AWS_NAME_MAX: usize = 64;
/// Google service account ids are 6 to 30 characters.
const GCP_ACCOUNT_MAX: usize = 30;

/// The warning every serverless render prints.
pub(crate) const DIRECT_INVOKE_WARNING: &str = "serverless: a direct function-to-function invoke through the platform API \
(AWS Lambda Invoke) bypasses HTTP-level checks: no sidecar, function URL auth or pvid token check sees it. Every role's \
policy.json carries the DenyDirectInvoke statement that blocks it; keep it attached";

pub(crate) fn render(plan: &Plan<'_>) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    out.warnings.push(DIRECT_INVOKE_WARNING.to_owned());
    for rule in plan.rules.iter().filter(|r| r.methods.is_some() || r.path.is_some()) {
        out.warnings.push(format!(
            "serverless: IAM cannot restrict methods or paths: services.{}.calls \"{}\" is rendered as {} -> {}; \
             {} must check the method and path itself",
            rule.caller,
            call_text(rule),
            rule.caller,
            rule.callee,
            rule.callee
        ));
    }
    for svc in &plan.services {
        let name = function_name(plan, &svc.name);
        if name.len() > AWS_NAME_MAX {
            return Err(RenderError::NameNotValid {
                target: plan.target,
                what: "Lambda function and IAM role name",
                name: name.clone(),
                reason: format!("is {} characters, over the limit of {AWS_NAME_MAX}: shorten the preview id or service `{}`", name.len(), svc.name),
            });
        }
        let account = account_id(plan, &svc.name);
        if account.len() > GCP_ACCOUNT_MAX {
            return Err(RenderError::NameNotValid {
                target: plan.target,
                what: "Cloud Run service account id",
                name: account.clone(),
                reason: format!(
                    "is {} characters, over Google's limit of {GCP_ACCOUNT_MAX}: shorten the preview id or service `{}`",
                    account.len(),
                    svc.name
                ),
            });
        }
        let dir = format!("aws/{}", svc.name);
        out.files.push(file(format!("{dir}/role.json"), json_text(&role(plan, &svc.name))));
        out.files.push(file(format!("{dir}/trust-policy.json"), json_text(&trust_policy())));
        out.files.push(file(format!("{dir}/policy.json"), json_text(&role_policy(plan, &svc.name))));
        out.files.push(file(
            format!("{dir}/function-url.json"),
            json_text(&json!({ "FunctionName": name, "AuthType": "AWS_IAM", "InvokeMode": "BUFFERED" })),
        ));
        let dir = format!("cloudrun/{}", svc.name);
        out.files.push(file(
            format!("{dir}/service-account.json"),
            json_text(&json!({
                "accountId": account,
                "displayName": format!("pvid {} {}", plan.preview, svc.name),
                "email": email(plan, &svc.name),
            })),
        ));
        out.files.push(file(format!("{dir}/iam-policy.json"), json_text(&invoker_policy(plan, &svc.name))));
    }
    Ok(out)
}

/// `pvid-<id>-<svc>`: the Lambda function and its role.
fn function_name(plan: &Plan<'_>, svc: &ServiceName) -> String {
    format!("pvid-{}-{svc}", plan.preview)
}

fn function_arn(plan: &Plan<'_>, function: &str) -> String {
    let o = plan.opts;
    format!("arn:{}:lambda:{}:{}:function:{function}", o.aws_partition, o.aws_region, o.aws_account)
}

fn role(plan: &Plan<'_>, svc: &ServiceName) -> Value {
    json!({
        "RoleName": function_name(plan, svc),
        "Description": format!("pvid preview {} service {}", plan.preview, svc),
        "Tags": [
            { "Key": "pvid:preview", "Value": plan.preview.as_str() },
            { "Key": "pvid:service", "Value": svc.as_str() },
        ],
    })
}

fn trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "lambda.amazonaws.com" },
            "Action": "sts:AssumeRole",
        }],
    })
}

/// Exactly the callees, only through their `AWS_IAM` function URLs; direct invokes of any of
/// the preview's functions denied.
fn role_policy(plan: &Plan<'_>, svc: &ServiceName) -> Value {
    let callees: Vec<String> =
        plan.callees_of(svc).into_iter().map(|c| function_arn(plan, &function_name(plan, c))).collect();
    let mut statements = Vec::new();
    if !callees.is_empty() {
        statements.push(json!({
            "Sid": "InvokeAllowedCalleesByUrl",
            "Effect": "Allow",
            "Action": "lambda:InvokeFunctionUrl",
            "Resource": callees,
            "Condition": { "StringEquals": { "lambda:FunctionUrlAuthType": "AWS_IAM" } },
        }));
        statements.push(json!({
            "Sid": "InvokeAllowedCalleesOnlyThroughUrl",
            "Effect": "Allow",
            "Action": "lambda:InvokeFunction",
            "Resource": callees,
            "Condition": { "Bool": { "lambda:InvokedViaFunctionUrl": "true" } },
        }));
    }
    statements.push(json!({
        "Sid": "DenyDirectInvoke",
        "Effect": "Deny",
        "Action": ["lambda:InvokeAsync", "lambda:InvokeFunction"],
        "Resource": function_arn(plan, &format!("pvid-{}-*", plan.preview)),
        "Condition": { "BoolIfExists": { "lambda:InvokedViaFunctionUrl": "false" } },
    }));
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// `pvid-<id>-<svc>`: the Cloud Run service account id.
fn account_id(plan: &Plan<'_>, svc: &ServiceName) -> String {
    format!("pvid-{}-{svc}", plan.preview)
}

fn email(plan: &Plan<'_>, svc: &ServiceName) -> String {
    format!("{}@{}.iam.gserviceaccount.com", account_id(plan, svc), plan.opts.gcp_project)
}

/// The Cloud Run service's IAM policy: `run.invoker` for exactly its callers (no binding at all
/// when nobody may call it: never `allUsers`).
fn invoker_policy(plan: &Plan<'_>, svc: &ServiceName) -> Value {
    let members: Vec<String> =
        plan.callers_of(svc).into_iter().map(|c| format!("serviceAccount:{}", email(plan, c))).collect();
    let bindings = if members.is_empty() { json!([]) } else { json!([{ "role": "roles/run.invoker", "members": members }]) };
    json!({ "bindings": bindings })
}
