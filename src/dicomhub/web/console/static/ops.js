export async function changes() {}
export async function operations() {}
export async function tags() {}
export async function health() {}
