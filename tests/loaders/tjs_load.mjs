// Loads a model's config and tokenizer with transformers.js the way its
// users point it at local models: env.localModelPath and the repo id.
//   node tjs_load.mjs LOCAL_MODEL_PATH REPO_ID TEXT
// Prints one JSON line: {"model_type", "architectures", "ids"}.
import { env, AutoConfig, AutoTokenizer } from '@huggingface/transformers';

const [root, id, text] = process.argv.slice(2);
env.localModelPath = root.endsWith('/') ? root : root + '/';
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useBrowserCache = false;
env.useFSCache = false;
const config = await AutoConfig.from_pretrained(id);
const tokenizer = await AutoTokenizer.from_pretrained(id);
console.log(JSON.stringify({
  model_type: config.model_type,
  architectures: config.architectures,
  ids: Array.from(tokenizer.encode(text, { add_special_tokens: false })),
}));
