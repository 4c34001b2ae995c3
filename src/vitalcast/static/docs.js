// The interactive API reference at /docs: Swagger UI, served from this server (copied from npm
// at set-up like the dashboard's libraries), reading the live /openapi.json. Its external
// validator badge is off, so the page talks to nobody but this server.
'use strict';

window.addEventListener('DOMContentLoaded', () => {
  window.ui = SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
  });
});
