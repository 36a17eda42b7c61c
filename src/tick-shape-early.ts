// Imported first by the CLI, so that the shape of Node's tick objects is held before the modules
// load and their start-up collections run (src/tick-shape.ts).
import { pinTickObjectShape } from './tick-shape.js'

pinTickObjectShape()
