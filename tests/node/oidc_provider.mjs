// A real OpenID Connect provider (oidc-provider, certified) for tests/test_jupyterhub.py.
// Usage: node oidc_provider.mjs SETTINGS.json. The settings (written by the test from the realm
// definition of nina.jupyterhub) hold: node_modules (where scripts/bootstrap --test-tools put
// oidc-provider), issuer, routes (Keycloak's paths), host, port, tls {cert, key} (PEM files),
// client {client_id, client_secret, redirect_uris}, users {name: {password, email, groups}},
// groups_claim.
// Logs one JSON line per request to stdout ({"method", "path", "host"}), and "listening" when ready.
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { parse as parseQuery } from 'node:querystring';
import { pathToFileURL } from 'node:url';

const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { default: Provider } = await import(pathToFileURL(path.join(settings.node_modules, 'oidc-provider', 'lib', 'index.js')).href);
const claim = settings.groups_claim;
const users = settings.users;

const provider = new Provider(settings.issuer, {
  routes: settings.routes,
  clients: [{ ...settings.client, grant_types: ['authorization_code'], response_types: ['code'] }],
  scopes: ['openid', 'profile', 'email', claim],
  claims: { openid: ['sub'], profile: ['preferred_username'], email: ['email'], [claim]: [claim] },
  cookies: { keys: ['nina-test-cookie-key'] },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, email: user.email, [claim]: user.groups };
      },
    };
  },
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginForm(res, uid, message) {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>Sign in</title><p>${escape(message)}</p>
<form method="post" action="/interaction/${escape(uid)}/login">
<input name="username"><input name="password" type="password"><button>Sign in</button></form>`);
}

async function interaction(req, res) {
  const match = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
  const uid = match[1];
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (req.method === 'GET') return loginForm(res, uid, 'Sign in to the NINA test realm');
  let body = '';
  for await (const chunk of req) body += chunk;
  const form = parseQuery(body);
  const user = users[form.username];
  if (!user || user.password !== form.password) return loginForm(res, uid, 'Wrong username or password');
  // Login and consent in one step: grant what the client asked for.
  const grant = new provider.Grant({ accountId: form.username, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { login: { accountId: form.username }, consent: { grantId } }, { mergeWithLastSubmission: false });
}

const handler = provider.callback();
const server = https.createServer(
  { cert: fs.readFileSync(settings.tls.cert), key: fs.readFileSync(settings.tls.key) },
  (req, res) => {
    console.log(JSON.stringify({ method: req.method, path: req.url.split('?')[0], host: req.headers.host }));
    if (req.url.startsWith('/interaction/')) {
      interaction(req, res).catch((err) => {
        console.error(err);
        res.writeHead(500);
        res.end(String(err));
      });
      return;
    }
    handler(req, res);
  },
);
server.listen(settings.port, settings.host, () => console.log('listening'));
