// The npm workload's application: uses what `npm ci` installed.
const ms = require('ms');
const escapeHtml = require('escape-html');
const isNumber = require('is-number');
console.log(escapeHtml('<app>'), ms(60000), isNumber(42));
