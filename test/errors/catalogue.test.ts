import t from 'tap';
import { CfengineClientError } from '../../src/cfengine/index.js';
import { CodecError } from '../../src/cfengine/codec.js';
import { ConfigError } from '../../src/config/index.js';
import { DerError, parseCertificateFacts, pemToDer } from '../../src/der/index.js';
import { RelayError, isRelayError, messageOf, relayError } from '../../src/errors.js';
import { decodeReport, isReportError } from '../../src/reports/index.js';

t.test('relayError fills the template and takes status, transient flag and cause from the catalogue', async (t) => {
  const cause = new Error('ECONNRESET');
  const error = relayError('RELAY_ERR_REMOTE_RUN_COMMAND', '/opt/rudder/bin/rudder', 'ENOENT', { cause });
  t.ok(isRelayError(error));
  t.match(error, { code: 'RELAY_ERR_REMOTE_RUN_COMMAND', status: 500, transient: false, message: 'cannot run /opt/rudder/bin/rudder: ENOENT' });
  t.equal(error.cause, cause);
  t.match(relayError('RELAY_ERR_REMOTE_RUN_FORWARD', 503), { message: 'sub-relay answered 503', status: 502, transient: true });
  t.match(relayError('RELAY_ERR_CFENGINE_CLOSED'), { message: 'connection closed', cause: undefined });
  t.equal(messageOf(relayError('RELAY_ERR_SYNC_STOPPED')), 'sync stopped');
});

t.test('codes without a template keep their message as thrown', async (t) => {
  t.match(new RelayError('RELAY_ERR_UPLOAD_NAME', 'bad name'), { code: 'RELAY_ERR_UPLOAD_NAME', status: 400, message: 'bad name' });
});

t.test('the errors modules throw carry a catalogue code', async (t) => {
  const thrown = (f: () => unknown): unknown => {
    try {
      f();
    } catch (error) {
      return error;
    }
    return undefined;
  };
  const der = thrown(() => parseCertificateFacts(Buffer.from([0x30, 0x01])));
  t.ok(der instanceof DerError && der.code === 'RELAY_ERR_DER', 'DER');
  const pem = thrown(() => pemToDer('-----BEGIN CERTIFICATE-----\n*not base64*\n-----END CERTIFICATE-----\n'));
  t.match(pem, { code: 'RELAY_ERR_DER', message: 'invalid base64 in PEM' });
  const report = thrown(() => decodeReport('r.log.gz', Buffer.from([0x1f, 0x8b, 0x08]), 1024));
  t.ok(isReportError(report) && report.reason === 'undecodable' && report.code === 'RELAY_ERR_REPORT_UNDECODABLE', 'report decoding');
  t.match(new CodecError('bogus header'), { code: 'RELAY_ERR_CFENGINE_CODEC', name: 'CodecError' });
  t.match(new CfengineClientError('refused'), { code: 'RELAY_ERR_CFENGINE_CLIENT', transient: true });
  t.match(new ConfigError([{ exitCode: 2, message: 'TOML syntax error' }]), { code: 'RELAY_ERR_CONFIG_SYNTAX', exitCode: 2 });
});
