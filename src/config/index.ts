// The YAML configuration file: loading, validation, and its JSON Schema.
export { loadConfigFile, parseConfig, checkShape, schemaValidator } from './load';
export { CONFIG_SCHEMA, schemaText, type JsonSchema } from './schema';
export { loadConfigFileApart } from './apart';
